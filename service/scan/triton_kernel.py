"""A fused selective scan for GPUs, written in Triton: the inference path where mamba-ssm is absent.

Why our own: mamba-ssm ships as source only and takes long to build against a given torch/CUDA,
so many GPU hosts lack it; the chunked torch form then materialises (b, D, L, N) temporaries
and runs dozens of kernels per layer (measured on an H200: one training iteration of the small
model at batch 32 × 128² took ~1 s and 60 GB). This kernel keeps the state in registers: each
program owns a few channels of one batch item and walks L in blocks of BLOCK_L steps, solving
each block with a parallel associative scan of (decay, input) pairs and carrying the state to the
next block, so it reads u, Δ, B, C once and writes y once.

Forward only (no autograd): the dispatcher uses it for inference and the chunked form whenever a
gradient is needed. Triton is imported lazily; `is_available()` is False without it or a GPU.
TRITON_INTERPRET=1 runs the same kernel on CPU tensors (the unit tests do).
"""

from __future__ import annotations

import logging
import os

import torch

_LOG = logging.getLogger("service.scan")

BLOCK_L = 64
"""Sequence steps per scan block: long enough to amortise the carried-state update."""

TILE_ELEMENTS = 2048
"""Elements of one [channels, N, BLOCK_L] register tile per program (~16 per thread)."""


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
    def _scan_fwd(
        u_ptr,
        dt_ptr,
        a_ptr,
        b_ptr,
        c_ptr,
        d_ptr,
        bias_ptr,
        y_ptr,
        length,
        channels,
        per_group,
        n_state,
        s_ub,
        s_ud,
        s_bb,
        s_bg,
        s_bn,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr,
        N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_L: tl.constexpr,
    ):
        pid_b = tl.program_id(0)
        ch = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, N)
        steps = tl.arange(0, BLOCK_L)
        ch_ok = ch < channels
        n_ok = n < n_state
        group = ch // per_group
        a_mat = tl.load(
            a_ptr + ch[:, None] * n_state + n[None, :],
            mask=ch_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        d_vec = (
            tl.load(d_ptr + ch, mask=ch_ok, other=0.0) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
        )
        bias = (
            tl.load(bias_ptr + ch, mask=ch_ok, other=0.0)
            if HAS_BIAS
            else tl.zeros([BLOCK_D], tl.float32)
        )
        row = pid_b * s_ub + ch * s_ud  # u, Δ and y share the (b, D, L) contiguous layout
        bc_row = pid_b * s_bb + group[:, None] * s_bg + n[None, :] * s_bn  # [BLOCK_D, N]
        h = tl.zeros([BLOCK_D, N], tl.float32)
        for block in range(0, tl.cdiv(length, BLOCK_L)):
            pos = block * BLOCK_L + steps
            ok = ch_ok[:, None] & (pos < length)[None, :]
            u = tl.load(u_ptr + row[:, None] + pos[None, :], mask=ok, other=0.0)
            dt = tl.load(dt_ptr + row[:, None] + pos[None, :], mask=ok, other=0.0) + bias[:, None]
            if SOFTPLUS:
                dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
            ok3 = ok[:, None, :] & n_ok[None, :, None]
            offs = bc_row[:, :, None] + pos[None, None, :]
            b_val = tl.load(b_ptr + offs, mask=ok3, other=0.0)
            c_val = tl.load(c_ptr + offs, mask=ok3, other=0.0)
            decay = tl.exp(dt[:, None, :] * a_mat[:, :, None])
            decay = tl.where(ok3, decay, 1.0)
            x = dt[:, None, :] * b_val * u[:, None, :]
            decay_cum, local = tl.associative_scan((decay, x), axis=2, combine_fn=_combine)
            states = decay_cum * h[:, :, None] + local
            y = tl.sum(states * c_val, axis=1) + d_vec[:, None] * u
            tl.store(y_ptr + row[:, None] + pos[None, :], y, mask=ok)
            last = (steps == BLOCK_L - 1)[None, None, :]
            # masked tail steps keep the state (decay 1, input 0), so the last column holds it
            h = tl.sum(tl.where(last, states, 0.0), axis=2)


def is_available() -> bool:
    """True when Triton imports and a CUDA device exists (or the interpreter is on)."""
    return triton is not None and (torch.cuda.is_available() or interpreting())


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The selective scan (reference contract) with the fused Triton kernel; no autograd."""
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    u32, dt32 = u.float().contiguous(), delta.float().contiguous()
    b32, c32 = B.float().contiguous(), C.float().contiguous()
    a32 = A.float().contiguous()
    y = torch.empty_like(u32)
    n_p2 = _pow2(n_state)
    block_d = max(1, min(_pow2(channels), TILE_ELEMENTS // (n_p2 * BLOCK_L)))
    grid = (batch, -(-channels // block_d))
    if triton is None:
        raise RuntimeError("the 'triton' selective-scan backend needs the triton package")
    _scan_fwd[grid](
        u32,
        dt32,
        a32,
        b32,
        c32,
        D.float().contiguous() if D is not None else u32,
        delta_bias.float().contiguous() if delta_bias is not None else u32,
        y,
        length,
        channels,
        channels // groups,
        n_state,
        u32.stride(0),
        u32.stride(1),
        b32.stride(0),
        b32.stride(1),
        b32.stride(2),
        HAS_D=D is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus,
        N=n_p2,
        BLOCK_D=block_d,
        BLOCK_L=BLOCK_L,
    )
    return y.to(u.dtype)
