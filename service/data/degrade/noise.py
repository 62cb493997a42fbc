"""Synthetic sensor noise for training and evaluating the denoiser.

Two models, both on float32 RGB in [0, 1] and clipped back to [0, 1] afterwards:

* **Gaussian (AWGN)**: ``y = x + n``, ``n ~ N(0, sigma^2)`` i.i.d. per pixel and channel.
  Training draws ``sigma`` uniformly in ``[1, 55] / 255``, which spans the sigma = 15/25/50
  benchmarks (CBSD68, Kodak24) and the nearly clean photos a served denoiser mostly meets, so
  one network covers every level; evaluation uses the fixed
  ``EVAL_SIGMA = 25 / 255`` so numbers are comparable between runs.
* **Poisson-Gaussian (signal-dependent)**, with probability ``poisson_probability`` (0.3):
  ``Var[y | x] = shot * x + sigma^2`` (the heteroscedastic Gaussian approximation of
  Foi et al. 2008), ``shot`` uniform in ``[5e-4, 1e-2]`` (a mid-grey pixel then gets an
  extra std of 4-18 / 255). Real camera noise grows with brightness; pure AWGN never
  teaches the network that, and the real-denoising task (SIDD-like inputs) needs it.

Clipping slightly lowers the measured std near 0 and 1; at mid-grey and sigma <= 50/255 the
effect is under 2 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIGMA_RANGE = (1.0 / 255.0, 55.0 / 255.0)
SHOT_RANGE = (5e-4, 1e-2)
POISSON_PROBABILITY = 0.3
JPEG_PROBABILITY = 0.25
JPEG_QUALITY_RANGE = (30, 95)
EVAL_SIGMA = 25.0 / 255.0


@dataclass(frozen=True)
class NoiseParams:
    """``sigma``: Gaussian std in [0, 1] units; ``shot``: variance per unit of intensity;
    ``jpeg_quality``: the JPEG round trip applied after the noise (None: none)."""

    sigma: float
    shot: float = 0.0
    jpeg_quality: int | None = None


def sample_noise_params(
    rng: np.random.Generator,
    *,
    sigma_range: tuple[float, float] = SIGMA_RANGE,
    poisson_probability: float = POISSON_PROBABILITY,
    shot_range: tuple[float, float] = SHOT_RANGE,
    jpeg_probability: float = JPEG_PROBABILITY,
    jpeg_quality_range: tuple[int, int] = JPEG_QUALITY_RANGE,
) -> NoiseParams:
    """Draw training-time noise parameters (documented ranges in the module docstring)."""
    sigma = float(rng.uniform(*sigma_range))
    shot = float(rng.uniform(*shot_range)) if rng.random() < poisson_probability else 0.0
    quality = None
    if rng.random() < jpeg_probability:
        quality = int(rng.integers(jpeg_quality_range[0], jpeg_quality_range[1] + 1))
    return NoiseParams(sigma=sigma, shot=shot, jpeg_quality=quality)


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode ``image`` (float RGB in [0, 1]) as a 4:2:0 JPEG at ``quality`` and decode it."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)).save(
        buffer, format="JPEG", quality=int(quality), subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / np.float32(255.0)


def add_noise(
    clean: np.ndarray, rng: np.random.Generator, params: NoiseParams | None = None
) -> tuple[np.ndarray, NoiseParams]:
    """Return ``(noisy, params)``; ``params`` are drawn from ``rng`` when not given."""
    if params is None:
        params = sample_noise_params(rng)
    x = np.asarray(clean, dtype=np.float32)
    std = np.sqrt(params.shot * x + params.sigma**2, dtype=np.float32)
    noise = rng.standard_normal(x.shape, dtype=np.float32) * std
    noisy = np.clip(x + noise, 0.0, 1.0).astype(np.float32, copy=False)
    if params.jpeg_quality is not None:
        noisy = jpeg_round_trip(noisy, params.jpeg_quality)
    return noisy, params


def eval_noise_params(sigma: float = EVAL_SIGMA) -> NoiseParams:
    """The fixed evaluation setting: plain AWGN at ``sigma`` (25/255 by default)."""
    return NoiseParams(sigma=sigma, shot=0.0)
