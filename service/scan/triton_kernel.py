"""A fused selective scan for GPUs, written in Triton: the inference path where mamba-ssm is absent.

Why our own: mamba-ssm ships as source only and takes long to build against a given torch/CUDA,
so many GPU hosts lack it; the chunked torch form then materialises (b, D, L, N) temporaries
and runs dozens of kernels per layer (measured on an H200: one training iteration of the small
model at batch 32 × 128² took ~1 s and 60 GB). This kernel keeps the state in registers: each
program owns a few channels of one batch item and walks L in blocks of BLOCK_L steps, solving
each block with a parallel associative scan of (decay, input) pairs and carrying the state to the
next block, so it reads u, Δ, B, C once and writes y once.

Long sequences with few channels (a small model's first level at batch 1: 128 channels, 65,536
steps) would leave most of the GPU idle, each program walking a thousand blocks in turn. So the
forward then splits L into stretches, one program each: a summary kernel gives
every stretch's final state from a zero start (the decay from each step to the stretch's end is
exp(A · suffix sum of Δ), so no scan is needed) and its Δ sum; the scan kernel then starts each
stretch from the state that the earlier stretches' summaries compose to.

Training uses the same walk: the forward saves the state at every block start, and the backward
goes over the blocks from last to first, recomputing each block's states from its saved start,
solving the adjoint recurrence g_t = exp(Δ_{t+1}A) ⊙ g_{t+1} + C_t·dy_t with a reversed
associative scan, and accumulating dB, dC (shared by a group's channels), dA, dD and the bias
gradient with atomic adds. Triton is imported lazily (dispatch imports this module on first GPU
use); `is_available()` is False without it or a GPU. TRITON_INTERPRET=1 runs the same kernels on
CPU tensors (the unit tests do).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

_LOG = logging.getLogger("service.scan")

BLOCK_L = 64
"""Sequence steps per scan block: long enough to amortise the carried-state update."""

TILE_ELEMENTS = 2048
"""Elements of one [channels, N, BLOCK_L] register tile per program (~16 per thread)."""

FULL_RATE_PROGRAMS_PER_SM = 3.7
"""Programs a multiprocessor runs before it is throughput-bound rather than latency-bound.
Measured on an H200 (bench/triton_tiles.py): a forward walk costs ~2.1 µs per block per program
up to ~500 programs at any tile of 2048 elements, and ~1.75 blocks/µs per SM beyond."""

SUMMARY_COST = 0.8
"""The summary kernel's time relative to the scan kernel's over the same blocks (H200: 0.4 vs
0.8 ms at the small model's level 1, 26 vs 34 ms in a published-size pass)."""

MIN_BLOCKS_PER_SPLIT = 4
"""Shortest stretch (in blocks) worth its own program."""


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


try:  # the module is imported only when a GPU scan is about to run (dispatch imports it lazily)
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install
    triton = None

if triton is not None:

    @triton.jit
    def _combine(a1, b1, a2, b2):  # type: ignore[no-untyped-def]
        # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _softplus(dt, SOFTPLUS: tl.constexpr):  # type: ignore[no-untyped-def]
        if SOFTPLUS:
            dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
        return dt

    @triton.jit
    def _channels(
        a_ptr, d_ptr, bias_ptr, channels, per_group, n_state, n_blocks,
        s_ub, s_ud, s_bb, s_bg, s_bn,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """This program's channels of one batch item: masks, A, D, bias, and the offsets of its
        rows in u/Δ/y (b, D, L), in B/C (b, G, N, L) and in the saved states (b, D, blocks, N)."""
        pid_b = tl.program_id(0)
        ch = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, N)
        ch_ok = ch < channels
        n_ok = n < n_state
        mask2 = ch_ok[:, None] & n_ok[None, :]
        a_mat = tl.load(a_ptr + ch[:, None] * n_state + n[None, :], mask=mask2, other=0.0)
        d_vec = tl.zeros([BLOCK_D], tl.float32)
        if HAS_D:
            d_vec = tl.load(d_ptr + ch, mask=ch_ok, other=0.0)
        bias = tl.zeros([BLOCK_D], tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + ch, mask=ch_ok, other=0.0)
        row = pid_b * s_ub + ch * s_ud
        bc_row = pid_b * s_bb + (ch // per_group)[:, None] * s_bg + n[None, :] * s_bn
        st_row = ((pid_b * channels + ch[:, None]) * n_blocks) * n_state + n[None, :]
        return ch_ok, n_ok, mask2, a_mat, d_vec, bias, row, bc_row, st_row

    @triton.jit
    def _block(
        u_ptr, dt_ptr, b_ptr, c_ptr, row, bc_row, a_mat, bias, h0, ch_ok, n_ok, block, length,
        SOFTPLUS: tl.constexpr, BLOCK_L: tl.constexpr,
    ):  # fmt: skip
        """One block's inputs and its states from h0, the state before it. Steps past the end
        get decay 1 and input 0, so they keep the state."""
        pos = block * BLOCK_L + tl.arange(0, BLOCK_L)
        ok = ch_ok[:, None] & (pos < length)[None, :]
        ok3 = ok[:, None, :] & n_ok[None, :, None]
        u = tl.load(u_ptr + row[:, None] + pos[None, :], mask=ok, other=0.0)
        dt_raw = tl.load(dt_ptr + row[:, None] + pos[None, :], mask=ok, other=0.0) + bias[:, None]
        dt = _softplus(dt_raw, SOFTPLUS)
        offs = bc_row[:, :, None] + pos[None, None, :]
        b_val = tl.load(b_ptr + offs, mask=ok3, other=0.0)
        c_val = tl.load(c_ptr + offs, mask=ok3, other=0.0)
        decay = tl.where(ok3, tl.exp(dt[:, None, :] * a_mat[:, :, None]), 1.0)
        x = dt[:, None, :] * b_val * u[:, None, :]
        decay_cum, local = tl.associative_scan((decay, x), axis=2, combine_fn=_combine)
        states = decay_cum * h0[:, :, None] + local
        return pos, ok, ok3, u, dt_raw, dt, b_val, c_val, decay, x, states

    @triton.jit
    def _split_rows(channels, n_state, n_splits, N: tl.constexpr, BLOCK_D: tl.constexpr):  # type: ignore[no-untyped-def]
        """Offsets of this program's channels in the summaries: h_end (b, D, splits, N) and the
        Δ sums (b, D, splits)."""
        ch = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        sum_row = (tl.program_id(0) * channels + ch) * n_splits
        return sum_row, sum_row[:, None] * n_state + tl.arange(0, N)[None, :]

    @triton.jit
    def _scan_summary(
        u_ptr, dt_ptr, a_ptr, b_ptr, bias_ptr, hend_ptr, dtsum_ptr,
        length, channels, per_group, n_state, n_blocks, blocks_per_split, n_splits,
        s_ub, s_ud, s_bb, s_bg, s_bn,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, N: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    ):  # fmt: skip
        """One stretch's final state from a zero start, and the sum of its Δ."""
        ch_ok, n_ok, mask2, a_mat, _, bias, row, bc_row, _ = _channels(
            a_ptr, a_ptr, bias_ptr, channels, per_group, n_state, n_blocks,
            s_ub, s_ud, s_bb, s_bg, s_bn, False, HAS_BIAS, N, BLOCK_D,
        )  # fmt: skip
        split = tl.program_id(2)
        first = split * blocks_per_split
        stop = tl.minimum(first + blocks_per_split, n_blocks)
        h = tl.zeros([BLOCK_D, N], tl.float32)
        total = tl.zeros([BLOCK_D], tl.float32)
        for block in range(first, stop):
            pos = block * BLOCK_L + tl.arange(0, BLOCK_L)
            ok = ch_ok[:, None] & (pos < length)[None, :]
            ok3 = ok[:, None, :] & n_ok[None, :, None]
            u = tl.load(u_ptr + row[:, None] + pos[None, :], mask=ok, other=0.0)
            dt = tl.load(dt_ptr + row[:, None] + pos[None, :], mask=ok, other=0.0)
            dt = tl.where(ok, _softplus(dt + bias[:, None], SOFTPLUS), 0.0)
            b_val = tl.load(b_ptr + bc_row[:, :, None] + pos[None, None, :], mask=ok3, other=0.0)
            block_sum = tl.sum(dt, axis=1)
            after = block_sum[:, None] - tl.cumsum(dt, axis=1)  # Δ of the steps after each t
            weight = tl.exp(after[:, None, :] * a_mat[:, :, None])
            x = dt[:, None, :] * b_val * u[:, None, :]
            h = tl.exp(block_sum[:, None] * a_mat) * h + tl.sum(weight * x, axis=2)
            total += block_sum
        sum_row, hend_row = _split_rows(channels, n_state, n_splits, N, BLOCK_D)
        tl.store(hend_ptr + hend_row + split * n_state, h, mask=mask2)
        tl.store(dtsum_ptr + sum_row + split, total, mask=ch_ok)

    @triton.jit
    def _scan_fwd(
        u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, y_ptr, state_ptr, hend_ptr, dtsum_ptr,
        length, channels, per_group, n_state, n_blocks, blocks_per_split, n_splits,
        s_ub, s_ud, s_bb, s_bg, s_bn,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        SAVE_STATES: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_L: tl.constexpr,
    ):  # fmt: skip
        ch_ok, n_ok, mask2, a_mat, d_vec, bias, row, bc_row, st_row = _channels(
            a_ptr, d_ptr, bias_ptr, channels, per_group, n_state, n_blocks,
            s_ub, s_ud, s_bb, s_bg, s_bn, HAS_D, HAS_BIAS, N, BLOCK_D,
        )  # fmt: skip
        last = (tl.arange(0, BLOCK_L) == BLOCK_L - 1)[None, None, :]
        split = tl.program_id(2)
        sum_row, hend_row = _split_rows(channels, n_state, n_splits, N, BLOCK_D)
        h = tl.zeros([BLOCK_D, N], tl.float32)
        for earlier in range(0, split):  # compose the earlier stretches' summaries
            h_end = tl.load(hend_ptr + hend_row + earlier * n_state, mask=mask2, other=0.0)
            dt_sum = tl.load(dtsum_ptr + sum_row + earlier, mask=ch_ok, other=0.0)
            h = tl.exp(dt_sum[:, None] * a_mat) * h + h_end
        first = split * blocks_per_split
        for block in range(first, tl.minimum(first + blocks_per_split, n_blocks)):
            if SAVE_STATES:  # the state before each block, for the backward
                tl.store(state_ptr + st_row + block * n_state, h, mask=mask2)
            pos, ok, _, u, _, _, _, c_val, _, _, states = _block(
                u_ptr, dt_ptr, b_ptr, c_ptr, row, bc_row, a_mat, bias, h, ch_ok, n_ok, block,
                length, SOFTPLUS, BLOCK_L,
            )  # fmt: skip
            y = tl.sum(states * c_val, axis=1) + d_vec[:, None] * u
            tl.store(y_ptr + row[:, None] + pos[None, :], y, mask=ok)
            # masked tail steps keep the state, so the last column holds it
            h = tl.sum(tl.where(last, states, 0.0), axis=2)

    @triton.jit
    def _scan_bwd(
        u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, state_ptr, dy_ptr,
        du_ptr, ddt_ptr, da_ptr, db_ptr, dc_ptr, dd_ptr, dbias_ptr,
        length, channels, per_group, n_state, n_blocks,
        s_ub, s_ud, s_bb, s_bg, s_bn,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    ):  # fmt: skip
        ch_ok, n_ok, mask2, a_mat, d_vec, bias, row, bc_row, st_row = _channels(
            a_ptr, d_ptr, bias_ptr, channels, per_group, n_state, n_blocks,
            s_ub, s_ud, s_bb, s_bg, s_bn, HAS_D, HAS_BIAS, N, BLOCK_D,
        )  # fmt: skip
        pid_b = tl.program_id(0)
        n = tl.arange(0, N)
        steps = tl.arange(0, BLOCK_L)
        is_last = (steps == BLOCK_L - 1)[None, None, :]
        is_first = (steps == 0)[None, None, :]
        group_id = (tl.program_id(1) * BLOCK_D) // per_group  # one group per program (_block_d)
        carry = tl.zeros([BLOCK_D, N], tl.float32)  # exp(Δ_s A) ⊙ g_s of the next block's first s
        da_acc = tl.zeros([BLOCK_D, N], tl.float32)
        dd_acc = tl.zeros([BLOCK_D], tl.float32)
        dbias_acc = tl.zeros([BLOCK_D], tl.float32)
        for i in range(0, n_blocks):
            block = n_blocks - 1 - i
            h0 = tl.load(state_ptr + st_row + block * n_state, mask=mask2, other=0.0)
            pos, ok, ok3, u, dt_raw, dt, b_val, c_val, decay, x, states = _block(
                u_ptr, dt_ptr, b_ptr, c_ptr, row, bc_row, a_mat, bias, h0, ch_ok, n_ok, block,
                length, SOFTPLUS, BLOCK_L,
            )  # fmt: skip
            dy = tl.load(dy_ptr + row[:, None] + pos[None, :], mask=ok, other=0.0)
            # adjoint: g_t = exp(Δ_{t+1}A) ⊙ g_{t+1} + C_t dy_t, the block's last t gets `carry`
            nxt = pos + 1
            ok_n = ch_ok[:, None] & (nxt < length)[None, :] & (steps < BLOCK_L - 1)[None, :]
            dt_n = tl.load(dt_ptr + row[:, None] + nxt[None, :], mask=ok_n, other=0.0)
            dt_n = _softplus(dt_n + bias[:, None], SOFTPLUS)
            ok3_n = ok_n[:, None, :] & n_ok[None, :, None]
            decay_n = tl.where(ok3_n, tl.exp(dt_n[:, None, :] * a_mat[:, :, None]), 1.0)
            src = c_val * dy[:, None, :] + tl.where(is_last, carry[:, :, None], 0.0)
            decay_n = tl.where(is_last, 1.0, decay_n)
            _, g = tl.associative_scan((decay_n, src), axis=2, combine_fn=_combine, reverse=True)
            g = tl.where(ok3, g, 0.0)
            # h_t − x_t = exp(Δ_t A) ⊙ h_{t−1}: the decay's share, with no division
            hx = (states - x) * g
            gb = tl.sum(g * b_val, axis=1)
            du = gb * dt + d_vec[:, None] * dy
            ddt = gb * u + tl.sum(hx * a_mat[:, :, None], axis=1)
            if SOFTPLUS:
                ddt = ddt * tl.where(dt_raw <= 20.0, tl.sigmoid(dt_raw), 1.0)
            ddt = tl.where(ok, ddt, 0.0)
            tl.store(du_ptr + row[:, None] + pos[None, :], du, mask=ok)
            tl.store(ddt_ptr + row[:, None] + pos[None, :], ddt, mask=ok)
            da_acc += tl.sum(hx * dt[:, None, :], axis=2)
            dd_acc += tl.sum(dy * u, axis=1)
            dbias_acc += tl.sum(ddt, axis=1)
            db = tl.sum(g * (dt * u)[:, None, :], axis=0)  # [N, BLOCK_L], this program's channels
            dc = tl.sum(states * dy[:, None, :], axis=0)
            g_offs = pid_b * s_bb + group_id * s_bg + n[:, None] * s_bn + pos[None, :]
            g_ok = n_ok[:, None] & (pos < length)[None, :]
            tl.atomic_add(db_ptr + g_offs, db, mask=g_ok)
            tl.atomic_add(dc_ptr + g_offs, dc, mask=g_ok)
            carry = tl.sum(tl.where(is_first, g * decay, 0.0), axis=2)
        ch = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        tl.atomic_add(da_ptr + ch[:, None] * n_state + n[None, :], da_acc, mask=mask2)
        tl.atomic_add(dd_ptr + ch, dd_acc, mask=ch_ok)
        tl.atomic_add(dbias_ptr + ch, dbias_acc, mask=ch_ok)


def is_available() -> bool:
    """True when Triton imports and a CUDA device exists (or the interpreter is on)."""
    return triton is not None and (torch.cuda.is_available() or interpreting())


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _block_d(channels: int, per_group: int, n_p2: int) -> int:
    """Channels per program: fill the register tile, but stay inside one B/C group (a power of
    two that divides the group's size), so the backward's dB/dC sums belong to one group."""
    block = max(1, min(_pow2(channels), TILE_ELEMENTS // (n_p2 * BLOCK_L)))
    while per_group % block:
        block //= 2
    return block


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter: size the split as for an H100/H200


def _split_count(programs: int, n_blocks: int, device: torch.device) -> int:
    """Stretches per sequence. A split forward costs (1 + SUMMARY_COST) times the work, spread
    over `splits` times the programs: it pays only while the unsplit grid leaves the GPU short
    of full rate by more than that factor (a small model at batch 1: 32 programs walking
    1,024 blocks each), and then just enough stretches to reach full rate."""
    full_rate = FULL_RATE_PROGRAMS_PER_SM * _multiprocessors(device)
    if programs * (1.0 + SUMMARY_COST) >= full_rate:
        return 1
    wanted = math.ceil(full_rate / programs)
    return max(1, min(wanted, n_blocks // MIN_BLOCKS_PER_SPLIT))


def _layout(
    u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, splits: int | None = None
) -> dict[str, Any]:
    """Tile sizes and grids: the backward's (item, channel block), and the forward's with the
    sequence split in `splits` stretches (chosen for the GPU when None)."""
    batch, channels, length = u.shape
    per_group = channels // B.shape[1]
    n_p2 = _pow2(A.shape[1])
    block_d = _block_d(channels, per_group, n_p2)
    n_blocks = -(-length // BLOCK_L)
    grid = (batch, -(-channels // block_d))  # one program per (item, channel block)
    if splits is None:
        splits = _split_count(grid[0] * grid[1], n_blocks, u.device)
    per_split = -(-n_blocks // max(1, min(splits, n_blocks)))
    splits = -(-n_blocks // per_split)  # no empty stretch
    return {
        "batch": batch,
        "channels": channels,
        "length": length,
        "per_group": per_group,
        "n_state": A.shape[1],
        "n_p2": n_p2,
        "block_d": block_d,
        "n_blocks": n_blocks,
        "grid": grid,
        "splits": splits,
        "blocks_per_split": per_split,
        "fwd_grid": (*grid, splits),
    }


def _forward(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    bias: torch.Tensor | None,
    softplus: bool,
    save_states: bool,
    splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 contiguous inputs -> y, and the per-block start states when asked."""
    if triton is None:
        raise RuntimeError("the 'triton' selective-scan backend needs the triton package")
    k = _layout(u, A, B, splits)
    y = torch.empty_like(u)
    states = (
        torch.empty(
            k["batch"],
            k["channels"],
            k["n_blocks"],
            k["n_state"],
            device=u.device,
            dtype=torch.float32,
        )
        if save_states
        else None
    )
    dims = (k["length"], k["channels"], k["per_group"], k["n_state"], k["n_blocks"],
            k["blocks_per_split"], k["splits"],
            u.stride(0), u.stride(1), B.stride(0), B.stride(1), B.stride(2))  # fmt: skip
    h_end, dt_sum = y, y  # not read with one stretch
    if k["splits"] > 1:
        h_end = torch.empty(
            k["batch"],
            k["channels"],
            k["splits"],
            k["n_state"],
            device=u.device,
            dtype=torch.float32,
        )
        dt_sum = torch.empty(
            k["batch"], k["channels"], k["splits"], device=u.device, dtype=torch.float32
        )
        _scan_summary[k["fwd_grid"]](
            u, dt, A, B, bias if bias is not None else u, h_end, dt_sum, *dims,
            HAS_BIAS=bias is not None, SOFTPLUS=softplus, N=k["n_p2"], BLOCK_D=k["block_d"],
            BLOCK_L=BLOCK_L,
        )  # fmt: skip
    _scan_fwd[k["fwd_grid"]](
        u, dt, A, B, C, D if D is not None else u, bias if bias is not None else u, y,
        states if states is not None else y, h_end, dt_sum, *dims,
        HAS_D=D is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
        SAVE_STATES=save_states, N=k["n_p2"], BLOCK_D=k["block_d"], BLOCK_L=BLOCK_L,
    )  # fmt: skip
    return y, states


class _TritonScan(torch.autograd.Function):
    """Forward saves block-start states; backward is the reversed walk of `_scan_bwd`."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, D, bias, softplus, splits):  # type: ignore[no-untyped-def, override]
        y, states = _forward(u, dt, A, B, C, D, bias, softplus, save_states=True, splits=splits)
        ctx.save_for_backward(u, dt, A, B, C, D, bias, states)
        ctx.softplus = softplus
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[no-untyped-def, override]
        u, dt, A, B, C, D, bias, states = ctx.saved_tensors
        k = _layout(u, A, B)
        dy = dy.float().contiguous()
        du, ddt = torch.empty_like(u), torch.empty_like(dt)
        dA = torch.zeros_like(A)
        dB, dC = torch.zeros_like(B), torch.zeros_like(C)
        dD = torch.zeros(k["channels"], device=u.device, dtype=torch.float32)
        dbias = torch.zeros_like(dD)
        _scan_bwd[k["grid"]](
            u, dt, A, B, C, D if D is not None else u, bias if bias is not None else u, states,
            dy, du, ddt, dA, dB, dC, dD, dbias,
            k["length"], k["channels"], k["per_group"], k["n_state"], k["n_blocks"],
            u.stride(0), u.stride(1), B.stride(0), B.stride(1), B.stride(2),
            HAS_D=D is not None, HAS_BIAS=bias is not None, SOFTPLUS=ctx.softplus,
            N=k["n_p2"], BLOCK_D=k["block_d"], BLOCK_L=BLOCK_L,
        )  # fmt: skip
        return (
            du,
            ddt,
            dA,
            dB,
            dC,
            dD if D is not None else None,
            dbias if bias is not None else None,
            None,
            None,
        )


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    *,
    splits: int | None = None,
) -> torch.Tensor:
    """The selective scan (reference contract) with the fused Triton kernels, differentiable.
    `splits` fixes the forward's sequence split (tests, benchmarks); None sizes it for the GPU."""
    inputs = [
        t.float().contiguous() if t is not None else None
        for t in (u, delta, A, B, C, D, delta_bias)
    ]
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)
    )
    if needs_grad:
        y = _TritonScan.apply(*inputs, delta_softplus, splits)
    else:
        y, _ = _forward(
            *inputs,
            delta_softplus,
            save_states=False,  # type: ignore[arg-type]
            splits=splits,
        )
    return y.to(u.dtype)
