"""Fused numba kernels for SS2D's four-direction selective scan, channels-last.

Why this layout: SS2D's activations are (b, H, W, D) channels-last already, so the kernels scan
them in place. One task owns a block of channels of one image (LANES in the backward, up to
four times that in the forward, see service.scan.cross.forward_lanes) and runs all four directions
over it: row-major forward/backward (k = 0, 2) and column-major forward/backward (k = 1, 3), the
reversed ones simply walking the positions from the end (the same numbers as flipping, scanning
and flipping back). A column-major step reads the same LANES-channel cache line that a row-major
one does, so no transposed or flipped copy of u is ever made, and the four outputs are summed
into y while the task's slice of y is still in cache.

The vector is a block of LANES channels, not the N state lanes: every step does N independent
LANES-wide updates and the output <C, h> is a vertical sum over n (no horizontal reduction, no
padding of N to a vector width). Δ's projection (R multiply-adds) and softplus are computed in
the kernel, 32 steps at a time ahead of the scan, from the projection row xdbl[b, pos] =
u[b, pos] @ Wᵀ that also holds B and C, so no Δ tensor is materialised.

Training: the forward stores each direction's state every CHECKPOINT steps; the backward
recomputes each block from its checkpoint and runs the reverse scan (as in cpu_kernel).

`fast_exp` is cpu_kernel's. numba's on-disk cache only watches the file of the cached function,
so the cached kernels here are built by a factory whose closure holds a digest of cpu_kernel.py:
the digest is part of numba's cache key, and an edit to fast_exp recompiles these kernels too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numba import njit, prange

from service.scan import cpu_kernel
from service.scan.cpu_kernel import CHECKPOINT, fast_exp

LANES = 16
"""Channels per vector (one AVX-512 register, one 64-byte cache line of a channels-last row)."""

DIRECTIONS = 4

_F0 = np.float32(0.0)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
# log1p(t) = 2·atanh(s) = 2s(1 + s²/3 + s⁴/5 + …), s = t / (2 + t) ≤ 1/3 for t ≤ 1; the terms
# to s¹³ leave a relative error below 1e-7.
_Q1 = np.float32(2.0 / 3.0)
_Q2 = np.float32(2.0 / 5.0)
_Q3 = np.float32(2.0 / 7.0)
_Q4 = np.float32(2.0 / 9.0)
_Q5 = np.float32(2.0 / 11.0)
_Q6 = np.float32(2.0 / 13.0)

_DEPENDS = hashlib.sha256(Path(cpu_kernel.__file__).read_bytes()).hexdigest()


@njit(inline="always", fastmath=True)
def log1p_unit(t: np.float32) -> np.float32:
    """log(1 + t) for 0 ≤ t ≤ 1 by the 2·atanh series; relative error below 1e-7 and no
    cancellation for small t (unlike log(1 + t) computed as written)."""
    s = t / (_TWO + t)
    s2 = s * s
    return s * (_TWO + s2 * (_Q1 + s2 * (_Q2 + s2 * (_Q3 + s2 * (_Q4 + s2 * (_Q5 + s2 * _Q6))))))


@njit(inline="always", fastmath=True)
def softplus(x: np.float32) -> np.float32:
    """log(1 + eˣ) as max(x, 0) + log1p(e^−|x|): branch-free, so it vectorises.

    torch's threshold (x > 20 gives x) is the same number in float32, so it is not needed.
    """
    return max(x, _F0) + log1p_unit(fast_exp(-abs(x)))


@njit(inline="always", fastmath=True)
def softplus_and_slope(x: np.float32) -> tuple[np.float32, np.float32]:
    """(softplus(x), softplus'(x) = sigmoid(x)) sharing one exp, e^−|x| (never overflows)."""
    t = fast_exp(-abs(x))
    return max(x, _F0) + log1p_unit(t), (_ONE if x >= _F0 else t) / (_ONE + t)


@njit(inline="always")
def position(k: int, i: int, height: int, width: int) -> int:
    """Row-major position of step i of direction k (0 row, 1 column, 2/3 the same reversed)."""
    if k >= 2:
        i = height * width - 1 - i
    if k % 2 == 0:
        return i
    return (i % height) * width + i // height


@njit(inline="always", fastmath=True)
def project_delta(  # type: ignore[no-untyped-def]
    xdbl, dtw, dtb, out, task, t, bi, pos, k, seg, c0, nv
) -> None:
    """out[task, t] = Δ's pre-activation dtb + Σ_r dtw[r]·xdbl[seg + r] for the block."""
    for j in range(nv):
        out[task, t, j] = dtb[k, c0 + j]
    for r in range(dtw.shape[1]):
        xr = xdbl[bi, pos, seg + r]
        for j in range(nv):
            out[task, t, j] += dtw[k, r, c0 + j] * xr


@njit(inline="always")
def direction(turn: int, task: int) -> int:
    """The direction a task scans on its turn-th pass: odd tasks start from the other end.

    Neighbouring tasks run at the same time on different cores and write neighbouring cache
    lines of the same channels-last rows; started at opposite ends they touch rows far apart
    (measured: two tasks of one image 40% slower side by side than apart).
    """
    return (turn + 2 * (task % 2)) % DIRECTIONS


def _build(depends: str):  # type: ignore[no-untyped-def]
    """The cached kernels; `depends` (cpu_kernel's digest) is in their numba cache key.

    `depends` must stay their only closure variable: numba pickles the closure into the key, and
    a jitted helper defined in here would pickle differently in every process (no cache hits).

    Workspaces are arguments, not allocations, and each has its own array: numba marks array
    arguments noalias, so LLVM vectorises the channel loops without runtime overlap checks.
    Callers allocate them with torch (64-byte aligned, whole cache lines per task: no false
    sharing between threads). Channel indices are unsigned, so numba emits no negative-index
    wraparound and the accesses stay plain vector loads and stores.
    """

    @njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def cross_forward(
        u: np.ndarray,
        xdbl: np.ndarray,
        dtw: np.ndarray,
        dtb: np.ndarray,
        A: np.ndarray,
        Ds: np.ndarray,
        height: int,
        width: int,
        y: np.ndarray,
        state: np.ndarray,
        delta: np.ndarray,
        du: np.ndarray,
        acc: np.ndarray,
        checkpoints: np.ndarray,
    ) -> None:
        """y = the sum over the four directions of the selective scan (SS2D's core).

        u, y: (b, L, D), L = height·width row-major; xdbl: (b, L, 4·(R + 2N)), per direction
        [Δ rank R | B | C]; dtw: (4, R, D); dtb, Ds: (4, D); A: (4, N, D). checkpoints:
        (b, 4, ceil(L/CHECKPOINT), N, D) states before each block, or (b, 4, 0, N, D) not to
        store. Workspaces, W channels per task (the block width, read from state's last
        dimension; any W ≥ 1), tasks = b·ceil(D/W): state (tasks, N, W), delta (tasks,
        CHECKPOINT, W), du and acc (tasks, W): Δ·u and the output being summed, in separate
        arrays so that LLVM needs no overlap check between them. All float32, C-contiguous.
        """
        _ = depends
        batch, length, channels = u.shape
        n_state = A.shape[1]
        rank = dtw.shape[1]
        lanes = state.shape[2]
        blocks = (channels + lanes - 1) // lanes
        store = checkpoints.shape[2] > 0
        for task in prange(batch * blocks):
            bi = task // blocks
            c0 = np.uint64((task % blocks) * lanes)
            nv = np.uint64(min(lanes, channels - (task % blocks) * lanes))
            for turn in range(DIRECTIONS):
                k = direction(turn, task)
                seg = k * (rank + 2 * n_state)
                for n in range(n_state):
                    for j in range(lanes):
                        state[task, n, j] = _F0
                for start in range(0, length, CHECKPOINT):
                    steps = min(length - start, CHECKPOINT)
                    if store:
                        chunk = start // CHECKPOINT
                        for n in range(n_state):
                            for j in range(nv):
                                checkpoints[bi, k, chunk, n, c0 + j] = state[task, n, j]
                    # Δ of the whole block first: softplus is one long dependency chain per
                    # step, and 32 independent ones overlap where one per step would stall.
                    for t in range(steps):
                        pos = position(k, start + t, height, width)
                        project_delta(xdbl, dtw, dtb, delta, task, t, bi, pos, k, seg, c0, nv)
                    for t in range(steps):
                        for j in range(nv):
                            delta[task, t, j] = softplus(delta[task, t, j])
                    for t in range(steps):
                        pos = position(k, start + t, height, width)
                        for j in range(nv):
                            ul = u[bi, pos, c0 + j]
                            du[task, j] = delta[task, t, j] * ul
                            acc[task, j] = Ds[k, c0 + j] * ul
                        for n in range(n_state):
                            bn = xdbl[bi, pos, seg + rank + n]
                            cn = xdbl[bi, pos, seg + rank + n_state + n]
                            for j in range(nv):
                                decay = fast_exp(delta[task, t, j] * A[k, n, c0 + j])
                                hn = decay * state[task, n, j] + du[task, j] * bn
                                state[task, n, j] = hn
                                acc[task, j] += hn * cn
                        if turn == 0:
                            for j in range(nv):
                                y[bi, pos, c0 + j] = acc[task, j]
                        else:
                            for j in range(nv):
                                y[bi, pos, c0 + j] += acc[task, j]

    @njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def cross_backward(
        u: np.ndarray,
        xdbl: np.ndarray,
        dtw: np.ndarray,
        dtb: np.ndarray,
        A: np.ndarray,
        Ds: np.ndarray,
        height: int,
        width: int,
        dy: np.ndarray,
        checkpoints: np.ndarray,
        du: np.ndarray,
        dxdbl: np.ndarray,
        ddtw: np.ndarray,
        ddtb: np.ndarray,
        dA: np.ndarray,
        dDs: np.ndarray,
        h_buf: np.ndarray,
        a_buf: np.ndarray,
        d_buf: np.ndarray,
        s_buf: np.ndarray,
        state: np.ndarray,
        dh: np.ndarray,
        red_b: np.ndarray,
        red_c: np.ndarray,
        red_r: np.ndarray,
        sum_b: np.ndarray,
        sum_a: np.ndarray,
    ) -> None:
        """Gradients of `cross_forward` given dy (b, L, D) and its checkpoints.

        Outputs, written: du (b, L, D) (the scan's own path; xdbl's share comes back through
        the projection in torch) and dxdbl (S, b, L, 4·(R + 2N)), one copy per slice s of the
        channel blocks. Per-image partial sums, zero-initialised: ddtw (b, 4, R, D), ddtb and dDs
        (b, 4, D), dA (b, 4, N, D).

        Workspaces, tasks = b·S, T = CHECKPOINT: h_buf (tasks, T + 1, N, LANES) and a_buf
        (tasks, T, N, LANES), a block's states and decays; d_buf and s_buf (tasks, T, LANES), its
        Δ and softplus' (then dΔ's pre-activation); state (tasks, N, LANES); dh (tasks, blocks
        per slice, N, LANES), the reverse state of each channel block; red_b, red_c (tasks, T, N,
        LANES) and red_r (tasks, T, R, LANES), per-lane terms of dB, dC and dΔ-rank; sum_b and
        sum_a (tasks, LANES). Every array a loop writes is its own argument (see _build).

        A task owns a slice of channel blocks for all four directions. Per 32-step block it
        recomputes each channel block's states from the checkpoint and runs the reverse scan,
        adding the per-channel terms of dB, dC and dΔ-rank into red_* lane by lane; their
        16-lane sums go to dxdbl once per step after every channel block of the slice has added
        to them, while those 32 rows are still in L1.
        """
        _ = depends
        batch, length, channels = u.shape
        n_state = A.shape[1]
        rank = dtw.shape[1]
        seg_width = rank + 2 * n_state
        blocks = (channels + LANES - 1) // LANES
        slices = dxdbl.shape[0]
        n_chunks = checkpoints.shape[2]
        for task in prange(batch * slices):
            bi = task // slices
            s = task % slices
            first = (s * blocks) // slices
            last = ((s + 1) * blocks) // slices
            for turn in range(DIRECTIONS):
                k = direction(turn, task)
                seg = k * seg_width
                for slot in range(last - first):
                    for n in range(n_state):
                        for j in range(LANES):
                            dh[task, slot, n, j] = _F0
                for chunk in range(n_chunks - 1, -1, -1):
                    start = chunk * CHECKPOINT
                    steps = min(length - start, CHECKPOINT)
                    for t in range(steps):
                        for n in range(n_state):
                            for j in range(LANES):
                                red_b[task, t, n, j] = _F0
                            for j in range(LANES):
                                red_c[task, t, n, j] = _F0
                        for r in range(rank):
                            for j in range(LANES):
                                red_r[task, t, r, j] = _F0
                    for blk in range(first, last):
                        slot = blk - first
                        c0 = np.uint64(blk * LANES)
                        nv = np.uint64(min(LANES, channels - blk * LANES))
                        # Recompute the block's Δ, decays and states from its checkpoint.
                        for t in range(steps):
                            pos = position(k, start + t, height, width)
                            project_delta(xdbl, dtw, dtb, d_buf, task, t, bi, pos, k, seg, c0, nv)
                        for t in range(steps):
                            for j in range(nv):
                                dl, slope = softplus_and_slope(d_buf[task, t, j])
                                d_buf[task, t, j] = dl
                                s_buf[task, t, j] = slope
                        for n in range(n_state):
                            for j in range(nv):
                                hn = checkpoints[bi, k, chunk, n, c0 + j]
                                state[task, n, j] = hn
                                h_buf[task, 0, n, j] = hn
                        for t in range(steps):
                            pos = position(k, start + t, height, width)
                            for n in range(n_state):
                                bn = xdbl[bi, pos, seg + rank + n]
                                for j in range(nv):
                                    dl = d_buf[task, t, j]
                                    a = fast_exp(dl * A[k, n, c0 + j])
                                    hn = a * state[task, n, j] + dl * u[bi, pos, c0 + j] * bn
                                    a_buf[task, t, n, j] = a
                                    h_buf[task, t + 1, n, j] = hn
                                    state[task, n, j] = hn
                        # Reverse scan through the block.
                        for t in range(steps - 1, -1, -1):
                            pos = position(k, start + t, height, width)
                            for j in range(nv):
                                sum_b[task, j] = _F0
                                sum_a[task, j] = _F0
                            for n in range(n_state):
                                bn = xdbl[bi, pos, seg + rank + n]
                                cn = xdbl[bi, pos, seg + rank + n_state + n]
                                for j in range(nv):
                                    dl = d_buf[task, t, j]
                                    gl = dy[bi, pos, c0 + j]
                                    dhn = dh[task, slot, n, j] + gl * cn
                                    red_b[task, t, n, j] += dhn * dl * u[bi, pos, c0 + j]
                                    red_c[task, t, n, j] += gl * h_buf[task, t + 1, n, j]
                                    sum_b[task, j] += dhn * bn
                                    a = a_buf[task, t, n, j]
                                    tt = dhn * a * h_buf[task, t, n, j]
                                    dA[bi, k, n, c0 + j] += tt * dl
                                    sum_a[task, j] += tt * A[k, n, c0 + j]
                                    dh[task, slot, n, j] = dhn * a
                            for j in range(nv):
                                ul = u[bi, pos, c0 + j]
                                gl = dy[bi, pos, c0 + j]
                                grad_u = d_buf[task, t, j] * sum_b[task, j] + Ds[k, c0 + j] * gl
                                if turn == 0:
                                    du[bi, pos, c0 + j] = grad_u
                                else:
                                    du[bi, pos, c0 + j] += grad_u
                                dpre = (ul * sum_b[task, j] + sum_a[task, j]) * s_buf[task, t, j]
                                s_buf[task, t, j] = dpre
                                ddtb[bi, k, c0 + j] += dpre
                                dDs[bi, k, c0 + j] += gl * ul
                            for r in range(rank):
                                xr = xdbl[bi, pos, seg + r]
                                for j in range(nv):
                                    ddtw[bi, k, r, c0 + j] += s_buf[task, t, j] * xr
                                    red_r[task, t, r, j] += s_buf[task, t, j] * dtw[k, r, c0 + j]
                    # Lane sums: every position of this block is written once per direction.
                    for t in range(steps):
                        pos = position(k, start + t, height, width)
                        for r in range(rank):
                            total = _F0
                            for j in range(LANES):
                                total += red_r[task, t, r, j]
                            dxdbl[s, bi, pos, seg + r] = total
                        for n in range(n_state):
                            total_b = _F0
                            total_c = _F0
                            for j in range(LANES):
                                total_b += red_b[task, t, n, j]
                                total_c += red_c[task, t, n, j]
                            dxdbl[s, bi, pos, seg + rank + n] = total_b
                            dxdbl[s, bi, pos, seg + rank + n_state + n] = total_c

    return cross_forward, cross_backward


cross_forward, cross_backward = _build(_DEPENDS)
