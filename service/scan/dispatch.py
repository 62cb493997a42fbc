"""Which selective-scan backend runs a call, decided once per device type.

Why decide once: the choice depends on the environment (DIFFMAMBA_SCAN, whether numba, mamba-ssm
or Triton import), not on the call, so it is resolved on first use, logged in one INFO line and
cached. Export and tracing always take the chunked torch form: it is the only one made of standard
ops. On a GPU the order is mamba-ssm, then our Triton kernels, then chunked.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable

import torch

from service.scan import cuda
from service.scan.chunked import is_exporting, selective_scan_chunked
from service.scan.reference import selective_scan_reference

ENV_VAR = "DIFFMAMBA_SCAN"
BACKENDS = ("reference", "chunked", "cpu", "cuda", "triton")
CHOICES = ("auto", *BACKENDS)

_LOG = logging.getLogger("service.scan")
_LOCK = threading.Lock()
_override: str | None = None
_resolved: dict[str, str] = {}

ScanFn = Callable[..., torch.Tensor]


def _normalise(value: str, source: str) -> str:
    name = value.strip().lower()
    if name not in CHOICES:
        raise ValueError(
            f"{source}={value!r} is not a selective-scan backend; allowed values: "
            + ", ".join(CHOICES)
        )
    return name


def _requested() -> tuple[str, str]:
    """(backend name or 'auto', where it came from)."""
    if _override is not None:
        return _override, "set_backend"
    raw = os.environ.get(ENV_VAR, "")
    if not raw.strip():
        return "auto", "auto"
    return _normalise(raw, ENV_VAR), ENV_VAR


@functools.cache
def _cpu_kernel_imports() -> bool:
    try:
        import service.scan.cpu  # noqa: F401  (numba + llvmlite)
    except ImportError as exc:
        _LOG.debug("numba CPU kernel unavailable: %s", exc)
        return False
    except Exception as exc:  # e.g. numba finds no writable cache dir (set NUMBA_CACHE_DIR)
        _LOG.warning("numba CPU kernel failed to load, using the chunked form: %s", exc)
        return False
    return True


@functools.cache
def _triton_available() -> bool:
    from service.scan import triton_kernel  # imports triton, when installed

    return triton_kernel.is_available()


def available_backends() -> list[str]:
    """Backends that can run here: reference and chunked always, cpu with numba, cuda with
    a GPU and mamba-ssm, triton with a GPU (or TRITON_INTERPRET=1) and triton."""
    names = ["reference", "chunked"]
    if _cpu_kernel_imports():
        names.append("cpu")
    if cuda.is_available():
        names.append("cuda")
    if _triton_available():
        names.append("triton")
    return names


def _choose(device_type: str) -> tuple[str, str]:
    name, source = _requested()
    if name == "auto":
        if device_type == "cuda":
            if cuda.is_available():
                return "cuda", source
            return ("triton" if _triton_available() else "chunked"), source
        if device_type == "cpu":
            return ("cpu" if _cpu_kernel_imports() else "chunked"), source
        return "chunked", source
    wanted = name
    if name == "triton":
        from service.scan.triton_kernel import interpreting

        wanted = name if interpreting() else "cuda"
    if wanted in ("cpu", "cuda") and device_type != wanted:
        raise RuntimeError(
            f"selective-scan backend {name!r} ({source}) cannot run on {device_type} tensors"
        )
    if name not in available_backends():
        raise RuntimeError(
            f"selective-scan backend {name!r} ({source}) is not available here; available: "
            + ", ".join(available_backends())
        )
    return name, source


def active_backend(device: torch.device | str) -> str:
    """The backend used for tensors on `device`, resolved (and logged) on first use."""
    device_type = torch.device(device).type
    with _LOCK:
        name = _resolved.get(device_type)
        if name is None:
            name, source = _choose(device_type)
            _resolved[device_type] = name
            _LOG.info("selective scan backend for %s tensors: %s (%s)", device_type, name, source)
    return name


def set_backend(name: str | None) -> None:
    """Force a backend ('auto', 'reference', 'chunked', 'cpu', 'cuda', 'triton') over
    DIFFMAMBA_SCAN, or None to go back to it. Clears the cached choice so the next call resolves
    (and logs) again."""
    global _override
    with _LOCK:
        _override = None if name is None else _normalise(name, "set_backend")
        _resolved.clear()


def _implementation(name: str) -> ScanFn:
    if name == "cpu":
        from service.scan.cpu import selective_scan_cpu

        return selective_scan_cpu
    if name == "cuda":
        return cuda.selective_scan_cuda
    if name == "reference":
        return selective_scan_reference
    if name == "triton":
        from service.scan.triton_kernel import selective_scan_triton

        return selective_scan_triton
    return selective_scan_chunked


def _check_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Shape errors here, with the shapes, rather than deep inside a kernel."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, channels, length), got {tuple(u.shape)}")
    batch, channels, length = u.shape
    problems = []
    if delta.shape != u.shape:
        problems.append(f"delta {tuple(delta.shape)} != u {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != channels:
        problems.append(f"A {tuple(A.shape)} is not (channels={channels}, N)")
    n_state = A.shape[-1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2:] != (n_state, length):
            problems.append(
                f"{name} {tuple(t.shape)} is not (batch={batch}, G, N={n_state}, L={length})"
            )
        elif t.shape[1] == 0 or channels % t.shape[1]:
            problems.append(f"{name} has {t.shape[1]} groups, which do not divide {channels}")
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        problems.append(f"B has {B.shape[1]} groups but C has {C.shape[1]}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (channels,):
            problems.append(f"{name} {tuple(t.shape)} is not (channels={channels},)")
    others = (delta, A, B, C, D, delta_bias)
    if any(t is not None and t.device != u.device for t in others):
        problems.append("all tensors must be on u's device " + str(u.device))
    if problems:
        raise ValueError("selective_scan: " + "; ".join(problems))


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """y = selective scan (mamba-ssm selective_scan_fn semantics, z = None, grouped B/C).

    u, delta: (b, Dch, L); A: (Dch, N); B, C: (b, G, N, L), channel i uses group i // (Dch/G);
    D, delta_bias: (Dch,) or None. Δ = softplus(delta + delta_bias) when delta_softplus;
    h_l = exp(Δ_l A) ⊙ h_{l−1} + Δ_l B_l u_l, y_l = <C_l, h_l> + D u_l, computed in float32,
    returned in u.dtype. Differentiable with every backend.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias)
    name = "chunked" if is_exporting() else active_backend(u.device)
    return _implementation(name)(u, delta, A, B, C, D, delta_bias, delta_softplus)


def warmup(device: torch.device | str | None = None) -> None:
    """Fail at start-up on a bad DIFFMAMBA_SCAN and compile (or load) the numba kernel now
    rather than on the first request, when CPU tensors would use it.

    device: where the model runs, if known; for a non-CPU device its backend is resolved (and
    logged) instead and nothing is compiled.
    """
    if device is not None and torch.device(device).type != "cpu":
        active_backend(device)
        return
    name, _ = _requested()  # ValueError on an unknown DIFFMAMBA_SCAN
    if name in ("auto", "cpu") and _cpu_kernel_imports():
        from service.scan.cpu import warmup as warmup_cpu
        from service.scan.cross import warmup as warmup_cross

        warmup_cpu()
        warmup_cross()
