"""Compiled CPU selective scan (numba): forward, checkpointed forward and backward kernels.

Why this layout: the work is one exp and two FMAs per (channel, step, state lane). Channels run in
parallel (prange); the N state lanes of one step are a contiguous inner loop over B/C transposed
to (b, G, L, N), so with `fast_exp` (no libm call) it compiles to 16-wide AVX-512 code. Δ arrives
already softplus'd (torch does it, so its semantics match the reference exactly and autograd
chains the softplus and delta_bias for free).

Training: the forward stores the state every CHECKPOINT steps (b·D·L/32·N floats, the size of u
for N = 32); the backward recomputes each 32-step block from its checkpoint into a small buffer
and runs the reverse scan. B and C are shared by the channels of a group, so their gradients are
summed over channels: the backward runs one task per (batch, group, channel slice), each writing
its own partial sum, which the caller adds up; no atomics, no races.

The kernels release the GIL (they touch no Python objects), so a server's other threads keep
running during a scan; service.scan.cpu serialises kernel calls with a lock.

`fast_exp` lives here too (not in its own module): numba's on-disk cache is keyed on the file of
the cached function only, so a helper in another file could change without invalidating it.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

CHECKPOINT = 32
"""Steps between stored states in the training forward (the backward recomputes within)."""

LANES = 16
"""State lanes per AVX-512 vector. Callers pad N to a multiple of it with zero lanes (A = 0,
B = C = 0 keep them at h = 0): N = 8 then costs what N = 16 does, not more."""

_F0 = np.float32(0.0)

# fast_exp: a float32 exp that LLVM can vectorise. A libm `expf` call inside the lane loop stops
# the loop vectoriser, and exp(Δ·A) is the bulk of the work. Range reduction + a degree-6
# polynomial (Cephes expf coefficients, max relative error ≈ 3e-7) + 2^k assembled from its
# exponent bits is plain arithmetic, so the lane loop compiles to AVX2/AVX-512 code. The argument
# is clamped to [-87, 88] so 2^k stays a normal float (no denormals, no inf); the scan only
# needs x ≤ 0.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_LO = np.float32(-87.0)
_HI = np.float32(88.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_BIAS = np.int32(127)
_MANTISSA_BITS = np.int32(23)


@intrinsic
def _int_bits_as_float(typingctx, bits):  # type: ignore[no-untyped-def]
    """Reinterpret an int32's bits as a float32 (a free bitcast, so it vectorises)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(inline="always", fastmath=True)
def fast_exp(x: np.float32) -> np.float32:
    """exp(x) for float32 x, relative error ≤ 3e-7 on [-87, 88]; x is clamped to that range."""
    x = min(max(x, _LO), _HI)
    k = np.floor(x * _LOG2E + _HALF)
    r = x - k * _LN2_HI
    r = r - k * _LN2_LO
    p = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * (r * r) + r + _ONE
    return p * _int_bits_as_float((np.int32(k) + _BIAS) << _MANTISSA_BITS)


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def exp_rows(x: np.ndarray, out: np.ndarray) -> None:
    """out = fast_exp(x) for 2-D float32 arrays, rows in parallel (tests and the benchmark)."""
    for r in prange(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for i in range(xr.shape[0]):
            orow[i] = fast_exp(xr[i])


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def scan_forward(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    Bt: np.ndarray,
    Ct: np.ndarray,
    D: np.ndarray,
    y: np.ndarray,
    state: np.ndarray,
    checkpoints: np.ndarray,
) -> None:
    """y = selective scan; also fills `checkpoints` unless it has 0 blocks (inference).

    u, delta (Δ after softplus), y: (b, Dch, L); A: (Dch, N); Bt, Ct: (b, G, L, N); D: (Dch,)
    (zeros for none); state: (b, Dch, N) zeros in, final states out; checkpoints:
    (b, Dch, ceil(L/CHECKPOINT), N) states before each block, or (b, Dch, 0, N) not to store.
    All float32, C-contiguous.

    LLVM vectorises a runtime-N lane loop 32 lanes at a time (16 × 2 interleaved), which N = 16
    never enters: N that is a multiple of LANES but not of 2·LANES runs as fixed 16-lane blocks
    (unsigned index, so no negative-index wraparound code). No views of the arguments are taken
    inside the parallel loop: numba then marks the array arguments noalias and LLVM vectorises
    the lane loop without runtime alias checks.
    """
    batch, channels, length = u.shape
    groups = Bt.shape[1]
    n_state = A.shape[1]
    per_group = channels // groups
    store = checkpoints.shape[2] > 0
    blocked = n_state % LANES == 0 and n_state % (2 * LANES) != 0
    for task in prange(batch * channels):
        bi = task // channels
        d = task % channels
        g = d // per_group
        d_d = D[d]
        for pos in range(length):
            if store and pos % CHECKPOINT == 0:
                blk = pos // CHECKPOINT
                for n in range(n_state):
                    checkpoints[bi, d, blk, n] = state[bi, d, n]
            dl = delta[bi, d, pos]
            ul = u[bi, d, pos]
            dul = dl * ul
            acc = _F0
            if blocked:
                for n0 in range(0, n_state, LANES):
                    for j in range(LANES):
                        n = np.uint64(n0 + j)
                        hn = fast_exp(dl * A[d, n]) * state[bi, d, n] + dul * Bt[bi, g, pos, n]
                        state[bi, d, n] = hn
                        acc += hn * Ct[bi, g, pos, n]
            else:
                for n in range(n_state):
                    hn = fast_exp(dl * A[d, n]) * state[bi, d, n] + dul * Bt[bi, g, pos, n]
                    state[bi, d, n] = hn
                    acc += hn * Ct[bi, g, pos, n]
            y[bi, d, pos] = acc + d_d * ul


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def scan_backward(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    Bt: np.ndarray,
    Ct: np.ndarray,
    D: np.ndarray,
    dy: np.ndarray,
    checkpoints: np.ndarray,
    du: np.ndarray,
    ddelta: np.ndarray,
    dA: np.ndarray,
    dD: np.ndarray,
    dBt: np.ndarray,
    dCt: np.ndarray,
    dh: np.ndarray,
    h_buf: np.ndarray,
    a_buf: np.ndarray,
) -> None:
    """Gradients of the scan given dy and the forward's checkpoints.

    Outputs: du, ddelta (w.r.t. Δ after softplus): (b, Dch, L); per-batch partial sums, all
    zero-initialised: dA (b, Dch, N), dD (b, Dch), dBt and dCt (b, G, S, L, N) (one per slice s
    of each group's channels). Workspace: dh (b, Dch, N) zeros; h_buf (tasks, CHECKPOINT + 1, N)
    and a_buf (tasks, CHECKPOINT, N) with tasks = b·G·S. Blocks run outermost so the 32 rows of
    dB/dC a block touches stay in L1 while every channel of the slice adds to them.
    """
    batch, channels, length = u.shape
    groups = Bt.shape[1]
    slices = dBt.shape[2]
    n_state = A.shape[1]
    per_group = channels // groups
    n_blocks = checkpoints.shape[2]
    for task in prange(batch * groups * slices):
        bi = task // (groups * slices)
        g = (task // slices) % groups
        s = task % slices
        first = g * per_group + (s * per_group) // slices
        last = g * per_group + ((s + 1) * per_group) // slices
        for blk in range(n_blocks - 1, -1, -1):
            start = blk * CHECKPOINT
            steps = min(length - start, CHECKPOINT)
            for d in range(first, last):
                d_d = D[d]
                for n in range(n_state):
                    h_buf[task, 0, n] = checkpoints[bi, d, blk, n]
                # Recompute the block's decays and states from its checkpoint.
                for j in range(steps):
                    pos = start + j
                    dl = delta[bi, d, pos]
                    dul = dl * u[bi, d, pos]
                    for n in range(n_state):
                        a = fast_exp(dl * A[d, n])
                        a_buf[task, j, n] = a
                        h_buf[task, j + 1, n] = a * h_buf[task, j, n] + dul * Bt[bi, g, pos, n]
                # Reverse scan through the block.
                dd_acc = _F0
                for j in range(steps - 1, -1, -1):
                    pos = start + j
                    dl = delta[bi, d, pos]
                    ul = u[bi, d, pos]
                    dul = dl * ul
                    gl = dy[bi, d, pos]
                    sum_b = _F0
                    sum_a = _F0
                    for n in range(n_state):
                        dhn = dh[bi, d, n] + gl * Ct[bi, g, pos, n]
                        dCt[bi, g, s, pos, n] += gl * h_buf[task, j + 1, n]
                        dBt[bi, g, s, pos, n] += dhn * dul
                        sum_b += dhn * Bt[bi, g, pos, n]
                        a = a_buf[task, j, n]
                        t = dhn * a * h_buf[task, j, n]
                        dA[bi, d, n] += t * dl
                        sum_a += t * A[d, n]
                        dh[bi, d, n] = dhn * a
                    du[bi, d, pos] = dl * sum_b + d_d * gl
                    ddelta[bi, d, pos] = ul * sum_b + sum_a
                    dd_acc += gl * ul
                dD[bi, d] += dd_acc
