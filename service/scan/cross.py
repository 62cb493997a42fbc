"""SS2D's four-direction selective scan fused on the CPU (numba), with autograd.

Why: the generic path materialises cross_scan(x) (four copies of u, two flipped), per-direction
Δ, B and C transposes, softplus and the flip-back merge: a dozen full-tensor passes per layer,
which dominate once a batch no longer fits in cache. Here u stays one channels-last (b, H, W, D)
tensor; a single matmul gives every direction's Δ-rank, B and C rows (b, H, W, 4·(R + 2N)), and
`cross_kernel` does Δ's projection, softplus, the four scans and their sum in one pass per
channel block. The result is the same function (tests hold it to the reference path), so it is
only a faster route; SS2D takes it (service.nn.ss2d.cpu_fused) for float32 CPU tensors when the
scan backend is `cpu` and nothing is being exported or traced (export needs the generic path's
standard ops). Importing this module needs numba.

Autograd: torch differentiates the cheap reshapes around the kernel (the projection matmul,
−exp(A_logs), transposes); `CrossScanCPU` supplies the kernel's own gradients with the compiled
checkpointed backward.
"""

from __future__ import annotations

import numba
import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable

from service.scan import cross_kernel
from service.scan.cpu import _LOCK, _np  # one numba kernel at a time, scan or fused
from service.scan.cross_kernel import CHECKPOINT, DIRECTIONS, LANES


def _blocks(channels: int) -> int:
    return -(-channels // LANES)


FORWARD_LANES = (64, 32, LANES)
"""Block widths the forward tries, widest first. A wider block gives every step more
independent vector updates per state row, which hides the latency of the exp and of the
output's running sum (``python bench/scan_lanes.py`` measures each width). Narrower blocks
only to keep every thread busy; the backward keeps LANES."""


def forward_lanes(batch: int, channels: int, threads: int) -> int:
    """The widest block that still gives each of ``threads`` threads a task, at least LANES."""
    for lanes in FORWARD_LANES:
        if batch * -(-channels // lanes) >= threads:
            return lanes
    return LANES


def _forward(
    u: torch.Tensor,
    xdbl: torch.Tensor,
    dtw: torch.Tensor,
    dtb: torch.Tensor,
    A: torch.Tensor,
    Ds: torch.Tensor,
    store_checkpoints: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel on (b, H, W, D) u: y and the checkpoints (empty when not stored)."""
    batch, height, width, channels = u.shape
    length = height * width
    n_state = A.shape[1]
    lanes = forward_lanes(batch, channels, numba.get_num_threads())
    tasks = batch * -(-channels // lanes)
    chunks = -(-length // CHECKPOINT) if store_checkpoints else 0
    y = torch.empty_like(u)
    state = u.new_empty(tasks, n_state, lanes)
    delta = u.new_empty(tasks, CHECKPOINT, lanes)
    du = u.new_empty(tasks, lanes)
    acc = u.new_empty(tasks, lanes)
    checkpoints = u.new_empty(batch, DIRECTIONS, chunks, n_state, channels)
    with _LOCK:
        cross_kernel.cross_forward(
            _np(u).reshape(batch, length, channels), _np(xdbl).reshape(batch, length, -1),
            _np(dtw), _np(dtb), _np(A), _np(Ds), height, width,
            _np(y).reshape(batch, length, channels), _np(state), _np(delta), _np(du), _np(acc),
            _np(checkpoints),
        )  # fmt: skip
    return y, checkpoints


def _slices(batch: int, blocks: int) -> int:
    """Channel-block slices per image in the backward: enough tasks to keep every thread busy
    (each slice beyond the first costs one more partial copy of dxdbl)."""
    wanted = -(-2 * numba.get_num_threads() // batch)
    return max(1, min(blocks, wanted))


class CrossScanCPU(torch.autograd.Function):
    """y = Σ_k scan_k(u, Δ_k, A_k, B_k, C_k, D_k) on channels-last float32 tensors."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        u: torch.Tensor,
        xdbl: torch.Tensor,
        dtw: torch.Tensor,
        dtb: torch.Tensor,
        A: torch.Tensor,
        Ds: torch.Tensor,
    ) -> torch.Tensor:
        y, checkpoints = _forward(u, xdbl, dtw, dtb, A, Ds, store_checkpoints=True)
        ctx.save_for_backward(u, xdbl, dtw, dtb, A, Ds, checkpoints)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dy: torch.Tensor):  # type: ignore[override]
        u, xdbl, dtw, dtb, A, Ds, checkpoints = ctx.saved_tensors  # type: ignore[attr-defined]
        batch, height, width, channels = u.shape
        length = height * width
        n_state, rank = A.shape[1], dtw.shape[1]
        seg_width = rank + 2 * n_state
        blocks = _blocks(channels)
        slices = _slices(batch, blocks)
        tasks = batch * slices
        dy = dy.float().contiguous()
        du = torch.empty_like(u)
        dxdbl = u.new_empty(slices, batch, length, DIRECTIONS * seg_width)
        ddtw = u.new_zeros(batch, DIRECTIONS, rank, channels)
        ddtb = u.new_zeros(batch, DIRECTIONS, channels)
        dA = u.new_zeros(batch, DIRECTIONS, n_state, channels)
        dDs = u.new_zeros(batch, DIRECTIONS, channels)
        work = [
            u.new_empty(tasks, CHECKPOINT + 1, n_state, LANES),  # h_buf
            u.new_empty(tasks, CHECKPOINT, n_state, LANES),  # a_buf
            u.new_empty(tasks, CHECKPOINT, LANES),  # d_buf
            u.new_empty(tasks, CHECKPOINT, LANES),  # s_buf
            u.new_empty(tasks, n_state, LANES),  # state
            u.new_empty(tasks, -(-blocks // slices), n_state, LANES),  # dh
            u.new_empty(tasks, CHECKPOINT, n_state, LANES),  # red_b
            u.new_empty(tasks, CHECKPOINT, n_state, LANES),  # red_c
            u.new_empty(tasks, CHECKPOINT, rank, LANES),  # red_r
            u.new_empty(tasks, LANES),  # sum_b
            u.new_empty(tasks, LANES),  # sum_a
        ]
        with _LOCK:
            cross_kernel.cross_backward(
                _np(u).reshape(batch, length, channels), _np(xdbl).reshape(batch, length, -1),
                _np(dtw), _np(dtb), _np(A), _np(Ds), height, width,
                _np(dy).reshape(batch, length, channels), _np(checkpoints),
                _np(du).reshape(batch, length, channels), _np(dxdbl), _np(ddtw), _np(ddtb),
                _np(dA), _np(dDs), *(_np(w) for w in work),
            )  # fmt: skip
        dxdbl = dxdbl[0] if slices == 1 else dxdbl.sum(dim=0)
        return (
            du,
            dxdbl.reshape(xdbl.shape),
            ddtw.sum(dim=0),
            ddtb.sum(dim=0),
            dA.sum(dim=0),
            dDs.sum(dim=0),
        )


def cross_selective_scan(
    u: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
) -> torch.Tensor:
    """SS2D's core on channels-last u (b, H, W, D) -> (b, H, W, D), float32 CPU tensors.

    Same parameters and meaning as SS2D: x_proj_weight (4, R + 2N, D), dt_projs_weight
    (4, D, R), dt_projs_bias (4, D), A_logs (4·D, N), Ds (4·D,). Equal to
    cross_merge(selective_scan(cross_scan(u), ...)) up to float32 rounding.
    """
    channels, n_state = u.shape[-1], A_logs.shape[1]
    u = u.contiguous()
    xdbl = F.linear(u, x_proj_weight.reshape(-1, channels)).contiguous()
    dtw = dt_projs_weight.float().transpose(1, 2).contiguous()
    dtb = dt_projs_bias.float().contiguous()
    A = (-torch.exp(A_logs.float())).reshape(DIRECTIONS, channels, n_state).transpose(1, 2)
    A = A.contiguous()
    Ds4 = Ds.float().reshape(DIRECTIONS, channels).contiguous()
    inputs = (u, xdbl, dtw, dtb, A, Ds4)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return CrossScanCPU.apply(*inputs)
    y, _ = _forward(*inputs, store_checkpoints=False)
    return y


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) both fused kernels now, not on the first
    request: a first compile takes seconds. For start-up code, next to service.scan.warmup."""
    generator = torch.Generator().manual_seed(0)
    channels, n_state, rank = 4, 4, 1
    u = torch.randn(1, 3, 5, channels, generator=generator, requires_grad=True)
    x_proj = torch.randn(DIRECTIONS, rank + 2 * n_state, channels, generator=generator)
    dt_proj = torch.randn(DIRECTIONS, channels, rank, generator=generator)
    bias = torch.zeros(DIRECTIONS, channels)
    A_logs = torch.zeros(DIRECTIONS * channels, n_state)
    Ds = torch.ones(DIRECTIONS * channels)
    with torch.no_grad():
        cross_selective_scan(u, x_proj, dt_proj, bias, A_logs, Ds)
    cross_selective_scan(u, x_proj, dt_proj, bias, A_logs, Ds).sum().backward()
