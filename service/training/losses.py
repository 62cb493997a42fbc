"""Differentiable image losses for training: L1, PSNR, SSIM and MS-SSIM, plus stage 2's mix.

Written in plain torch (no pytorch-msssim dependency) so stage 2 can backpropagate through them
into the sampler. Conventions follow Wang et al. and ``skimage.metrics.structural_similarity``
with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``: an 11-tap Gaussian window
(σ = 1.5), K1 = 0.01, K2 = 0.03, statistics only where the window fits inside the image ("valid"
filtering, which is what skimage's border crop amounts to), averaged over pixels and channels.

MS-SSIM on small patches: the standard 5 scales need a side of at least 11·2⁴ = 176 px, more than
a 64² training patch has. We keep every scale at which the 11-px window still fits (64 px → 3
scales, 128 px → 4) and renormalise the first weights of the standard five to sum to one. If even
one scale does not fit (side < 11), the window shrinks to the largest odd size that fits and a
single-scale SSIM is returned. Negative contrast-structure terms are clamped to a small positive
floor before the fractional powers (as pytorch-msssim does with ReLU), keeping gradients finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
STAGE2_ALPHA = 0.84  # the paper's α: weight of (1 − MS-SSIM); L1 gets 1 − α
_POSITIVE_FLOOR = 1e-6


def l1_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute error."""
    return (a - b).abs().mean()


PSNR_LOSS_EPS = 1e-8  # caps a perfect image at 80 dB: the loss stays finite


def psnr_loss(a: torch.Tensor, b: torch.Tensor, ceiling: float | None = None) -> torch.Tensor:
    """Minus the PSNR (dB, images in [0, 1]) averaged over the batch's images (NAFNet's loss).

    Why for blind restoration: L1 averages pixel errors, so a batch's heavily degraded images
    (large errors) dominate it and lightly degraded or clean ones (small errors) barely count,
    and a network learns to smooth everything. Averaging dB gives every image the same weight
    per dB gained, which is what the per-cell mean PSNR of the evaluation grid measures:
    30 -> 31 dB on a clean photo counts as much as 20 -> 21 dB on a noisy one.

    ``ceiling`` (dB): an image restored above it adds nothing. Without one, a dB is as cheap to
    win on a clean pair (its gradient weight grows as 1/MSE) as it is worthless there: 38 -> 42
    dB on clean photos outweighs 25 -> 26 dB on degraded ones, and a run with clean pairs drifts
    towards the identity. A ceiling well above the clean-photo target keeps that target and
    spends the capacity on the degraded inputs.
    """
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    psnr = -(10.0 / math.log(10.0)) * torch.log(mse + PSNR_LOSS_EPS)
    if ceiling is not None:
        psnr = psnr.clamp(max=ceiling)
    return -psnr.mean()


def gaussian_window(size: int = WIN_SIZE, sigma: float = WIN_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (float64, made separable by the caller)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable depthwise 'valid' Gaussian filtering of (B, C, H, W)."""
    c = x.shape[1]
    k = win.to(x.dtype).to(x.device)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _ssim_terms(
    x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, data_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (B,) mean SSIM and mean contrast-structure term cs."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _filter(x, win), _filter(y, win)
    sxx = _filter(x * x, win) - mu_x**2
    syy = _filter(y * y, win) - mu_y**2
    sxy = _filter(x * y, win) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.flatten(1).mean(1), cs_map.flatten(1).mean(1)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape: {x.shape}, {y.shape}")


def _window_for(x: torch.Tensor, win_size: int) -> int:
    """The requested window, or the largest odd one that fits a too-small image."""
    side = min(x.shape[-2:])
    if side >= win_size:
        return win_size
    return max(1, side if side % 2 else side - 1)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = WIN_SIZE,
    sigma: float = WIN_SIGMA,
    reduction: str = "mean",
) -> torch.Tensor:
    """SSIM of (B, C, H, W) images; ``reduction='none'`` gives one value per image."""
    _check_pair(x, y)
    win = gaussian_window(_window_for(x, win_size), sigma)
    value, _ = _ssim_terms(x, y, win, data_range)
    return value.mean() if reduction == "mean" else value


def ms_ssim_scales(height: int, width: int, win_size: int = WIN_SIZE) -> int:
    """How many of the 5 scales fit: the window must fit the smallest one."""
    side = min(height, width)
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2**scales >= win_size:
        scales += 1
    return scales


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = WIN_SIZE,
    sigma: float = WIN_SIGMA,
    scales: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-scale SSIM; ``scales`` defaults to as many as fit (see the module docstring)."""
    _check_pair(x, y)
    fit = ms_ssim_scales(*x.shape[-2:], win_size=win_size)
    scales = fit if scales is None else scales
    if not 1 <= scales <= fit:
        raise ValueError(f"{scales} scales do not fit {tuple(x.shape[-2:])} (at most {fit})")
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    win = gaussian_window(_window_for(x, win_size), sigma)
    terms = []
    for level in range(scales):
        s, cs = _ssim_terms(x, y, win, data_range)
        last = level == scales - 1
        terms.append((s if last else cs).clamp_min(_POSITIVE_FLOOR))
        if not last:
            pad = (0, x.shape[-1] % 2, 0, x.shape[-2] % 2)
            x = F.avg_pool2d(F.pad(x, pad, mode="replicate"), 2)
            y = F.avg_pool2d(F.pad(y, pad, mode="replicate"), 2)
    stacked = torch.stack(terms, dim=1)  # (B, scales)
    value = torch.prod(stacked ** weights, dim=1)
    return value.mean() if reduction == "mean" else value


def stage2_loss(
    restored: torch.Tensor, clean: torch.Tensor, alpha: float = STAGE2_ALPHA
) -> torch.Tensor:
    """α·(1 − MS-SSIM) + (1 − α)·L1, both images in [0, 1] (the paper's fine-stage loss)."""
    return alpha * (1 - ms_ssim(restored, clean)) + (1 - alpha) * l1_loss(restored, clean)


ImageLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(restored, clean) -> scalar loss, both images in [0, 1]."""


def _l1(alpha: float, ceiling: float | None) -> ImageLoss:
    return l1_loss


def _psnr(alpha: float, ceiling: float | None) -> ImageLoss:
    return lambda a, b: psnr_loss(a, b, ceiling)


def _ms_ssim_l1(alpha: float, ceiling: float | None) -> ImageLoss:
    return lambda a, b: stage2_loss(a, b, alpha)


RESTORATION_LOSSES: dict[str, Callable[[float, float | None], ImageLoss]] = {
    "l1": _l1,
    "psnr": _psnr,
    "ms-ssim-l1": _ms_ssim_l1,
}
"""``--loss``: how a restoration is compared with the clean image, for a single-pass network's
regression and for Diff-Mamba's stage 2 alike. Each entry builds the loss from the run's
``alpha`` (the MS-SSIM weight) and ``psnr_ceiling``."""

DEFAULT_LOSS = {False: "l1", True: "ms-ssim-l1"}
"""The release's loss by whether the network takes a timestep: VmambaIR regresses with L1,
Diff-Mamba's stage 2 with α·(1 − MS-SSIM) + (1 − α)·L1."""


def restoration_loss(name: str, alpha: float = STAGE2_ALPHA,
                     ceiling: float | None = None) -> ImageLoss:
    """The image loss ``name`` of ``RESTORATION_LOSSES``, configured."""
    if name not in RESTORATION_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(RESTORATION_LOSSES)}, got {name!r}")
    return RESTORATION_LOSSES[name](alpha, ceiling)
