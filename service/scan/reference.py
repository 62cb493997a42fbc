"""The selective scan by its definition: one time step after another.

Slow on purpose: it is the ground truth every fast backend is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prepare_delta(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool
) -> torch.Tensor:
    """Δ as every backend sees it: float32, bias added, softplus (threshold 20) applied."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def expand_groups(bc: torch.Tensor, channels: int) -> torch.Tensor:
    """(b, G, N, L) grouped B or C -> (b, channels, N, L); channel i uses group i // (ch / G)."""
    groups = bc.shape[1]
    return bc.float().repeat_interleave(channels // groups, dim=1)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """h_l = exp(Δ_l A) h_{l-1} + Δ_l B_l u_l ;  y_l = <C_l, h_l> + D u_l  (float32)."""
    dtype_out = u.dtype
    u = u.float()
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    batch, channels, length = u.shape
    A = A.float()
    Bx = expand_groups(B, channels)
    Cx = expand_groups(C, channels)
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for step in range(length):
        d = delta[:, :, step, None]
        h = torch.exp(d * A) * h + d * Bx[:, :, :, step] * u[:, :, step, None]
        ys.append((h * Cx[:, :, :, step]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, channels, 0)
    if D is not None:
        y = y + D.float()[None, :, None] * u
    return y.to(dtype_out)
