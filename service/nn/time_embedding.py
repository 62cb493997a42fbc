"""Diff-Mamba's timestep embedding: fixed sinusoids through SiLU, no learned projection."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sinusoidal_silu_embedding(t: torch.Tensor, channels: int) -> torch.Tensor:
    """(B,) float timesteps -> (B, channels, 1, 1): SiLU([sin(t f), cos(t f)]), sines first.

    f_i = exp(-i ln(10000) / (half - 1)); zero-padded when ``channels`` is odd.
    """
    half = channels // 2
    t = t.float().reshape(-1)
    scale = math.log(10000.0) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -scale)
    args = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if channels % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return F.silu(emb)[:, :, None, None]
