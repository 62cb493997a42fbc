"""mamba-ssm's fused CUDA selective scan, imported lazily.

Why lazily and defensively: mamba-ssm is an optional extra with compiled extensions; on machines
without it (or with a build that does not match the installed torch/CUDA) importing it fails,
sometimes with OSError or RuntimeError rather than ImportError. `is_available()` turns every such
failure into False so the dispatcher falls back to the chunked torch form.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

_LOG = logging.getLogger("service.scan")

_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _selective_scan_fn() -> Callable[..., torch.Tensor] | None:
    """mamba_ssm's selective_scan_fn, or None when it cannot be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, or OSError/RuntimeError from a broken build
        _LOG.debug("mamba-ssm unavailable: %s: %s", type(exc).__name__, exc)
        return None
    return selective_scan_fn


def is_available() -> bool:
    """True when a CUDA device exists and mamba-ssm's kernel imports."""
    return torch.cuda.is_available() and _selective_scan_fn() is not None


def selective_scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The selective scan (reference contract) with mamba-ssm's kernel; CUDA tensors only.

    The kernel wants u, delta and the (grouped, b·G·N·L) B and C in one input dtype (fp32, fp16
    or bf16) and A, D, delta_bias in fp32; it computes in fp32 and returns the input dtype. Half
    inputs go in as they are only when all four share the dtype (the values the reference reads
    after .float() are then the same); otherwise everything is promoted to fp32, never narrowed.
    """
    fn = _selective_scan_fn()
    if fn is None:
        raise RuntimeError("the 'cuda' selective-scan backend needs mamba-ssm (import failed)")
    dtype_out = u.dtype
    shared = {u.dtype, delta.dtype, B.dtype, C.dtype}
    dtype_in = u.dtype if len(shared) == 1 and u.dtype in _INPUT_DTYPES else torch.float32
    y = fn(
        u.to(dtype_in),
        delta.to(dtype_in),
        A.float(),
        B.to(dtype_in),
        C.to(dtype_in),
        D=D.float() if D is not None else None,
        z=None,
        delta_bias=delta_bias.float() if delta_bias is not None else None,
        delta_softplus=delta_softplus,
        return_last_state=False,
    )
    return y.to(dtype_out)
