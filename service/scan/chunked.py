"""The selective scan as chunked closed-form torch ops: any device, autograd and ONNX export.

Why this shape:

* Within a chunk of T ≤ 32 steps the local states (zero initial state) come from T vectorised
  update steps that run over *all* chunks at once, so the Python-level work is bounded by T, never
  by L, and every decay is exp(Δ·A) ≤ 1.
* Between chunks the state is carried with decays exp(A·cumsum(Δ)) taken *from the chunk start*,
  so the exponent is ≤ 0 and nothing can overflow however large Δ gets. The exp(+cumsum) trick
  (exp(S_t)·Σ exp(−S_s)·x_s) overflows float32 for trained Δ ranges and an exact T×T×N
  relative-decay tensor costs T× the memory and time; this form avoids both.
* The chunk-level recurrence h_k = exp(ΣΔ·A) ⊙ h_{k−1} + local_end_k has exactly the same shape
  as the step-level one, so it is solved by recursion (depth log_T(L)), not by a loop over chunks.
  The chunk decay is exp(A·ΣΔ) computed directly (no detached shift, which would cut its gradient).
* The sequence is processed in blocks along L with the state carried, so temporaries stay at a few
  MiB on the CPU (big temporaries cost page faults on every op) and memory stays bounded on a GPU.

Only standard ops (cumsum, exp, mul/add, sum, pad, reshape, cat, stack, slicing), nothing in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from service.scan.reference import prepare_delta

CHUNK = 16
"""Steps per chunk (≤ 32): measured fastest on CPU among 8/16/32; any value ≤ 32 is exact."""

BLOCK_ELEMENTS_CPU = 1 << 21
"""Elements of one (b, D, L_block, N) temporary on the CPU: a few MiB, reused from the heap."""

BLOCK_ELEMENTS_CUDA = 1 << 27
"""On a GPU bigger blocks mean fewer kernel launches; 2^27 floats is 512 MiB per temporary."""

BLOCK_ELEMENTS_EXPORT = 1 << 24
"""Elements of one temporary *per batch item* in an exported or compiled graph (64 MiB).

Per item because the batch of an exported graph is symbolic: block bounds computed from it would
be baked from the example batch while the slices follow the runtime one (ONNX Runtime then fails
for any other batch). A few blocks per layer keep the graph compact and a batch of 8 at 512 MiB
per temporary."""


def is_exporting() -> bool:
    """True under ONNX export, torch.jit tracing or torch.compile/export graph capture."""
    is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or is_compiling()


def _local_states(decay: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """h_t = decay_t ⊙ h_{t−1} + x_t from h_{−1} = 0 along dim −2 (the T steps of every chunk)."""
    h = x[..., 0, :]
    states = [h]
    for t in range(1, x.shape[-2]):
        h = decay[..., t, :] * h + x[..., t, :]
        states.append(h)
    return torch.stack(states, dim=-2)


def _chunk_carry(
    log_decay: torch.Tensor,
    local: torch.Tensor,
    carry_decay: torch.Tensor,
    h_init: torch.Tensor | None,
) -> torch.Tensor:
    """Add the state carried into each chunk to the chunk-local states.

    log_decay: (..., K, N) log of the decay over each whole chunk; local: (..., K, T, N) local
    states; carry_decay: (..., K, T, N) decay from each chunk's start to each step; h_init:
    (..., N) the state before the first chunk, None for zero (saves a full-size pass).
    """
    if local.shape[-3] == 1:
        return local if h_init is None else local + carry_decay * h_init[..., None, None, :]
    ends = linear_scan(log_decay[..., :-1, :], local[..., :-1, -1, :], h_init)
    first = torch.zeros_like(ends[..., :1, :]) if h_init is None else h_init[..., None, :]
    h0 = torch.cat([first, ends], dim=-2)
    return local + carry_decay * h0[..., None, :]


def linear_scan(
    log_decay: torch.Tensor, x: torch.Tensor, h_init: torch.Tensor | None, chunk: int = CHUNK
) -> torch.Tensor:
    """All states of h_t = exp(log_decay_t) ⊙ h_{t−1} + x_t, h_{−1} = h_init, along dim −2.

    log_decay ≤ 0 and x: (..., L, N); h_init: (..., N) or None for zero. Used for the
    chunk-level carries, where L is already L/T of the original length.
    """
    length = x.shape[-2]
    steps = min(chunk, length)
    pad = (-length) % steps
    if pad:
        # Padding with log-decay 0 and input 0 keeps the state unchanged: cropped below.
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
        x = F.pad(x, (0, 0, 0, pad))
    shape = (*x.shape[:-2], (length + pad) // steps, steps, x.shape[-1])
    log_decay = log_decay.reshape(shape)
    local = _local_states(torch.exp(log_decay), x.reshape(shape))
    cum = log_decay.cumsum(dim=-2)
    h = _chunk_carry(cum[..., -1, :], local, torch.exp(cum), h_init)
    return h.reshape(*x.shape[:-2], length + pad, x.shape[-1])[..., :length, :]


def _scan_block(
    delta: torch.Tensor,
    delta_u: torch.Tensor,
    A: torch.Tensor,
    Bt: torch.Tensor,
    Ct: torch.Tensor,
    h_init: torch.Tensor | None,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of L: y (b, G, Dg, Lb) and the final state (b, G, Dg, N).

    delta, delta_u: (b, G, Dg, Lb) with Lb a multiple of chunk; A: (G, Dg, N);
    Bt, Ct: (b, G, Lb, N); h_init: (b, G, Dg, N) or None for zero.
    """
    b, groups, per_group, length = delta.shape
    n = A.shape[-1]
    k = length // chunk
    d = delta.reshape(b, groups, per_group, k, chunk, 1)
    a = A[:, :, None, None, :]
    decay = torch.exp(d * a)  # (b, G, Dg, K, T, N), each ≤ 1
    x = delta_u.reshape(b, groups, per_group, k, chunk, 1) * Bt.reshape(b, groups, 1, k, chunk, n)
    local = _local_states(decay, x)
    cum = d.cumsum(dim=-2)  # ΣΔ from each chunk's start: decays are exp(A·ΣΔ) ≤ 1
    h = _chunk_carry(cum[..., -1, :] * A[:, :, None, :], local, torch.exp(cum * a), h_init)
    y = (h * Ct.reshape(b, groups, 1, k, chunk, n)).sum(dim=-1)
    return y.reshape(b, groups, per_group, length), h[..., -1, -1, :]


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    *,
    chunk: int = CHUNK,
    block_elements: int | None = None,
) -> torch.Tensor:
    """The selective scan (same contract as the reference) by chunked closed form, float32.

    chunk: steps per chunk (1..32). block_elements: cap on b·D·L_block·N per temporary
    (default by device; per batch item when exporting); L is padded to whole chunks internally
    and the output cropped.
    """
    if not 1 <= chunk <= 32:
        raise ValueError(f"chunk must be in 1..32, got {chunk}")
    dtype_out = u.dtype
    u = u.float()
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    b, channels, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    per_group = channels // groups
    if length == 0:
        return u.new_zeros(b, channels, 0).to(dtype_out)
    exporting = is_exporting()
    if block_elements is None:
        if exporting:
            block_elements = BLOCK_ELEMENTS_EXPORT
        else:
            block_elements = BLOCK_ELEMENTS_CUDA if u.is_cuda else BLOCK_ELEMENTS_CPU
    rows = int(channels) * int(n) * (1 if exporting else int(b))  # export: any batch, see above
    block = max(chunk, block_elements // max(1, rows) // chunk * chunk)
    padded = length + (-length) % chunk
    block = min(block, padded)
    pad = padded - length

    # Padding with Δ = 0 (decay 1, input 0) leaves the state unchanged; the output is cropped.
    delta_g = F.pad(delta, (0, pad)).reshape(b, groups, per_group, padded)
    delta_u = F.pad(delta * u, (0, pad)).reshape(b, groups, per_group, padded)
    Bt = F.pad(B.float(), (0, pad)).transpose(-1, -2)
    Ct = F.pad(C.float(), (0, pad)).transpose(-1, -2)
    A = A.float().reshape(groups, per_group, n)

    h: torch.Tensor | None = None
    ys = []
    for start in range(0, padded, block):
        stop = min(start + block, padded)
        y_block, h = _scan_block(
            delta_g[..., start:stop],
            delta_u[..., start:stop],
            A,
            Bt[:, :, start:stop],
            Ct[:, :, start:stop],
            h,
            chunk,
        )
        ys.append(y_block)
    y = (ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)).reshape(b, channels, padded)
    y = y[..., :length]
    if D is not None:
        y = y + D.float()[None, :, None] * u
    return y.to(dtype_out)
