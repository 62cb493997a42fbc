"""PSNR and SSIM as the restoration papers report them (BasicSR / Restormer conventions).

* Images are compared as **8-bit** images: float [0, 1] inputs are rounded to uint8 first,
  because that is what a saved output is (a network's sub-level precision never reaches a
  file, so it should not count).
* **RGB** metrics: PSNR over all pixels and channels at data range 255; SSIM per channel, then
  averaged (BasicSR's ``calculate_ssim``).
* **Y** metrics: the luma of ITU-R BT.601 YCbCr in MATLAB's ``rgb2ycbcr`` scaling,
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with RGB in [0, 1] (Y in [16, 235]). Like
  BasicSR's ``to_y_channel`` the Y plane is kept as float; MATLAB itself would round it to
  uint8, which changes PSNR by a few hundredths of a dB at most.
* SSIM: 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, statistics only where the
  window fits ("valid", what BasicSR's ``[5:-5, 5:-5]`` crop and skimage's border crop amount
  to), population covariance. It is the training SSIM (``service.training.losses.ssim``) run
  in float64 at data range 255, so validation and evaluation cannot drift apart; it equals
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255)``.
* ``crop_border`` pixels are dropped on every side before either metric (BasicSR's option;
  super-resolution uses it, the restoration benchmarks use 0).
* Identical images have infinite PSNR; it is capped at ``MAX_PSNR`` (100 dB, the training
  cap) so means and JSON stay finite.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from service.training.losses import ssim as _torch_ssim
from service.training.metrics import MAX_PSNR
from service.training.metrics import psnr as _torch_psnr

DATA_RANGE = 255.0
# BT.601 luma weights for R, G, B in [0, 1] and the offset, giving Y in [16, 235].
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0

__all__ = [
    "DATA_RANGE",
    "MAX_PSNR",
    "Y_OFFSET",
    "Y_WEIGHTS",
    "Metrics",
    "compare",
    "psnr",
    "rgb_to_y",
    "ssim",
    "to_uint8",
]


@dataclass(frozen=True)
class Metrics:
    """One image's (or a mean's) scores; PSNR in dB, SSIM in [-1, 1]."""

    psnr: float
    ssim: float
    psnr_y: float
    ssim_y: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @staticmethod
    def mean(items: list[Metrics]) -> Metrics:
        """Arithmetic mean per metric over images (how the papers' tables average)."""
        if not items:
            raise ValueError("no metrics to average")
        names = [f.name for f in fields(Metrics)]
        return Metrics(*(float(np.mean([getattr(m, n) for m in items])) for n in names))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 by rounding (values outside [0, 1] are clipped); uint8 passes."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected uint8 or float images, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("image has non-finite values")
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB (uint8, or float in [0, 1]) -> float64 (H, W) luma Y in [16, 235]."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")
    rgb = arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)
    return rgb @ np.asarray(Y_WEIGHTS, dtype=np.float64) + Y_OFFSET


def _as_batch(image: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) -> float64 (1, C, H, W) without rescaling."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3) or min(a.shape[:2]) < 1:
        raise ValueError(f"expected (H, W) or (H, W, C) images, got shape {a.shape}")


def _crop(image: np.ndarray, border: int) -> np.ndarray:
    if border < 0:
        raise ValueError(f"crop_border must be >= 0, got {border}")
    if border == 0:
        return image
    if min(image.shape[:2]) <= 2 * border:
        raise ValueError(f"crop_border {border} leaves nothing of a {image.shape[:2]} image")
    return image[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """PSNR in dB of two same-shape arrays on the ``data_range`` scale, capped at MAX_PSNR."""
    a, b = np.asarray(a), np.asarray(b)
    _check_pair(a, b)
    return float(_torch_psnr(_as_batch(a), _as_batch(b), data_range=data_range)[0])


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Gaussian-window SSIM of (H, W) or (H, W, C) arrays, averaged over channels.

    Images smaller than the 11-px window use the largest odd window that fits (the training
    SSIM's rule) instead of failing.
    """
    a, b = np.asarray(a), np.asarray(b)
    _check_pair(a, b)
    value = _torch_ssim(_as_batch(a), _as_batch(b), data_range=data_range)
    return float(value)


def compare(restored: np.ndarray, target: np.ndarray, crop_border: int = 0) -> Metrics:
    """All four metrics of an (H, W, 3) image against its ground truth, 8-bit quantised."""
    x, y = to_uint8(restored), to_uint8(target)
    _check_pair(x, y)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) RGB images, got shape {x.shape}")
    x, y = _crop(x, crop_border), _crop(y, crop_border)
    xy, yy = rgb_to_y(x), rgb_to_y(y)
    return Metrics(
        psnr=psnr(x, y),
        ssim=ssim(x, y),
        psnr_y=psnr(xy, yy),
        ssim_y=ssim(xy, yy),
    )
