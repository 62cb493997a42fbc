"""The numba CPU kernels behind the selective-scan contract, with autograd.

Why a thin torch layer around the kernels: softplus, delta_bias, dtype casts and the B/C transpose
to (b, G, L, N) stay ordinary torch ops, so autograd chains their gradients and the kernels only
ever see contiguous float32 arrays (numpy views, no copies). Inference runs the forward kernel
without checkpoints; training goes through `SelectiveScanCPU`, whose backward is the compiled
checkpointed reverse scan.
"""

from __future__ import annotations

import threading

import numba
import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable

from service.scan import cpu_kernel
from service.scan.reference import prepare_delta

_LOCK = threading.Lock()
"""One kernel at a time: each already uses every core, and numba's fallback threading layer
(workqueue) must not be entered from two Python threads at once."""

_PARTIAL_BYTES = 256 << 20
"""Cap on the extra memory of per-slice dB/dC partial sums in the backward."""


def _np(t: torch.Tensor):  # type: ignore[no-untyped-def]
    """Numpy view of a contiguous float32 CPU tensor (no copy)."""
    return t.detach().numpy()


def _forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bt: torch.Tensor,
    Ct: torch.Tensor,
    D: torch.Tensor | None,
    store_checkpoints: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel: y and the checkpoints ((b, Dch, 0, N) when not stored)."""
    batch, channels, length = u.shape
    n_state = A.shape[1]
    blocks = -(-length // cpu_kernel.CHECKPOINT) if store_checkpoints else 0
    y = torch.empty_like(u)
    state = u.new_zeros(batch, channels, n_state)
    checkpoints = u.new_empty(batch, channels, blocks, n_state)
    d = D if D is not None else u.new_zeros(channels)
    with _LOCK:
        cpu_kernel.scan_forward(
            _np(u), _np(delta), _np(A), _np(Bt), _np(Ct), _np(d), _np(y), _np(state),
            _np(checkpoints),
        )  # fmt: skip
    return y, checkpoints


def _slices(batch: int, groups: int, per_group: int, length: int, n_state: int) -> int:
    """Channel slices per group in the backward: enough tasks to keep every thread busy."""
    tasks = batch * groups
    wanted = -(-2 * numba.get_num_threads() // tasks)
    affordable = _PARTIAL_BYTES // max(1, 8 * tasks * length * n_state)
    return max(1, min(per_group, wanted, affordable))


class SelectiveScanCPU(torch.autograd.Function):
    """y = scan(u, Δ, A, Bᵀ, Cᵀ, D) on contiguous float32 CPU tensors, compiled both ways."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        Bt: torch.Tensor,
        Ct: torch.Tensor,
        D: torch.Tensor | None,
    ) -> torch.Tensor:
        y, checkpoints = _forward(u, delta, A, Bt, Ct, D, store_checkpoints=True)
        ctx.save_for_backward(u, delta, A, Bt, Ct, D, checkpoints)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dy: torch.Tensor):  # type: ignore[override]
        u, delta, A, Bt, Ct, D, checkpoints = ctx.saved_tensors  # type: ignore[attr-defined]
        batch, channels, length = u.shape
        groups, n_state = Bt.shape[1], A.shape[1]
        slices = _slices(batch, groups, channels // groups, length, n_state)
        tasks = batch * groups * slices
        dy = dy.float().contiguous()
        du = torch.empty_like(u)
        ddelta = torch.empty_like(u)
        dA = u.new_zeros(batch, channels, n_state)
        dD = u.new_zeros(batch, channels)
        dBt = u.new_zeros(batch, groups, slices, length, n_state)
        dCt = u.new_zeros(batch, groups, slices, length, n_state)
        dh = u.new_zeros(batch, channels, n_state)
        h_buf = u.new_empty(tasks, cpu_kernel.CHECKPOINT + 1, n_state)
        a_buf = u.new_empty(tasks, cpu_kernel.CHECKPOINT, n_state)
        d = D if D is not None else u.new_zeros(channels)
        with _LOCK:
            cpu_kernel.scan_backward(
                _np(u), _np(delta), _np(A), _np(Bt), _np(Ct), _np(d), _np(dy),
                _np(checkpoints), _np(du), _np(ddelta), _np(dA), _np(dD), _np(dBt), _np(dCt),
                _np(dh), _np(h_buf), _np(a_buf),
            )  # fmt: skip
        dBt = dBt[:, :, 0] if slices == 1 else dBt.sum(dim=2)
        dCt = dCt[:, :, 0] if slices == 1 else dCt.sum(dim=2)
        return du, ddelta, dA.sum(dim=0), dBt, dCt, dD.sum(dim=0) if D is not None else None


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The selective scan (reference contract) with the numba kernels; CPU tensors only."""
    dtype_out = u.dtype
    training = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)
    )
    # Zero state lanes up to a multiple of LANES (see cpu_kernel.LANES): the lane loops run 16 at
    # a time, so N = 8 padded to 16 is faster both ways (measured) than N = 8 in scalar loops.
    pad = -A.shape[1] % cpu_kernel.LANES
    delta = prepare_delta(delta, delta_bias, delta_softplus).contiguous()
    u32 = u.float().contiguous()
    A32 = F.pad(A.float(), (0, pad)).contiguous()
    Bt = F.pad(B.float(), (0, 0, 0, pad)).transpose(-1, -2).contiguous()
    Ct = F.pad(C.float(), (0, 0, 0, pad)).transpose(-1, -2).contiguous()
    D32 = D.float().contiguous() if D is not None else None
    if training:
        y = SelectiveScanCPU.apply(u32, delta, A32, Bt, Ct, D32)
    else:
        y, _ = _forward(u32, delta, A32, Bt, Ct, D32, store_checkpoints=False)
    return y.to(dtype_out)


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) every kernel and wake the thread pool.

    The first compile takes seconds and the first few parallel launches are slow, so servers call
    this at start-up instead of paying it on the first request.
    """
    generator = torch.Generator().manual_seed(0)
    b, channels, groups, n_state, length = 1, 4, 2, 8, 40
    u = torch.randn(b, channels, length, generator=generator, requires_grad=True)
    delta = torch.randn(b, channels, length, generator=generator, requires_grad=True)
    A = -torch.rand(channels, n_state, generator=generator).requires_grad_()
    B = torch.randn(b, groups, n_state, length, generator=generator, requires_grad=True)
    C = torch.randn(b, groups, n_state, length, generator=generator, requires_grad=True)
    D = torch.ones(channels, requires_grad=True)
    for _ in range(3):
        with torch.no_grad():
            selective_scan_cpu(u, delta, A, B, C, D)
    selective_scan_cpu(u, delta, A, B, C, D).sum().backward()
    x = torch.zeros(2, 16)
    cpu_kernel.exp_rows(x.numpy(), x.numpy())
