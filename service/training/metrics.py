"""PSNR for validation: per image on [0, 1], then averaged (as the papers' tables do)."""

from __future__ import annotations

import math

import torch

MAX_PSNR = 100.0  # identical images would give +inf; a cap keeps logs and means finite


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) PSNR in dB of (B, C, H, W) images."""
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    value = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-30))
    return value.clamp(max=MAX_PSNR).float()


def mean_psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    value = float(psnr(x, y).mean())
    return value if math.isfinite(value) else MAX_PSNR
