"""The selective-scan mixers of a network (SS2D, VmambaIR's OSS module) and two ways engines
treat them specially.

Why: the mixers are where the scan runs, and the scan has its own fast kernels (numba on the
CPU, mamba-ssm on CUDA) that neither torch.compile can trace nor reduced precision suits. A
mixer is recognised by owning an ``A_logs`` parameter (the SSM's state matrix), which holds for
every architecture the service knows without importing them.

Both wrappers replace ``forward`` on the module *instance*; in eager mode the wrapped forward
computes exactly what the original does, so an eager fallback sharing the model is unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


def scan_mixers(model: nn.Module) -> Iterator[nn.Module]:
    for module in model.modules():
        if "A_logs" in module._parameters:
            yield module


def _wrap(model: nn.Module, tag: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
          ) -> int:
    count = 0
    for module in scan_mixers(model):
        if getattr(module, tag, False):
            continue
        module.forward = wrap(module.forward)  # type: ignore[method-assign]
        setattr(module, tag, True)
        count += 1
    return count


def make_mixers_opaque(model: nn.Module) -> int:
    """torch.compile graph-breaks around each mixer, which then runs eagerly with its fast scan
    kernel (the fused numba kernel on the CPU); everything between mixers is compiled."""
    return _wrap(model, "_engine_opaque", torch.compiler.disable)


def keep_mixers_fp32(model: nn.Module) -> int:
    """Under autocast, run each mixer (projections, scan, gate) in float32 and hand back the
    caller's dtype: the recurrence accumulates over thousands of steps, where bf16/fp16 inputs
    cost far more accuracy than they save time."""

    def wrap(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def forward_fp32(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return forward(x.float())

        return forward_fp32

    return _wrap(model, "_engine_fp32", wrap)
