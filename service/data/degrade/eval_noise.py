"""Noise generators for the evaluation grid: fixed-strength Gaussian, Poisson-Gaussian, JPEG.

Each is ``f(clean, rng, **strength) -> noisy``: float32 (H, W, 3) in [0, 1] in and out, the
output rounded to 8-bit levels, every random draw taken from ``rng``. Strengths are in 8-bit
levels (sigma = 25 means 25/255), the unit the denoising benchmarks quote.

* ``gaussian_noise``: AWGN through ``noise.add_noise`` (the training primitive), so a cell at
  sigma = 25 is exactly the fixed evaluation setting. ``sigma`` in ``GAUSSIAN_SIGMA_RANGE``.
* ``poisson_gaussian_noise``: ``y = gain * Poisson(x / gain) + N(0, read^2)``. Training uses
  the heteroscedastic *Gaussian approximation* of the same variance (``noise.py``); drawing
  real Poisson counts here tests whether the denoiser copes with the skewed, discrete noise
  of dark regions that the approximation never showed it. ``gain`` (variance per unit of
  intensity; 1/gain photons at white) in ``GAIN_RANGE``, ``read_sigma`` in ``READ_SIGMA_RANGE``.
* ``jpeg_noise``: AWGN, then a Pillow JPEG round trip at ``quality`` (4:2:0 chroma, as cameras
  and browsers save): the blocky, spatially correlated residual noise of a shared photo, which
  a per-pixel noise model is not. ``sigma`` in ``JPEG_SIGMA_RANGE``, ``quality`` an integer in
  ``JPEG_QUALITY_RANGE``.
"""

from __future__ import annotations

import numpy as np

from .noise import NoiseParams, add_noise, jpeg_round_trip
from .validate import check_image, check_range, to_8bit

GAUSSIAN_SIGMA_RANGE = (1.0, 75.0)
GAIN_RANGE = (1e-4, 0.05)
READ_SIGMA_RANGE = (0.0, 30.0)
JPEG_SIGMA_RANGE = (0.0, 50.0)
JPEG_QUALITY_RANGE = (10, 95)
#: generator name -> parameter -> documented closed range (what the generators enforce).
PARAM_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "gaussian_noise": {"sigma": GAUSSIAN_SIGMA_RANGE},
    "poisson_gaussian_noise": {"gain": GAIN_RANGE, "read_sigma": READ_SIGMA_RANGE},
    "jpeg_noise": {"sigma": JPEG_SIGMA_RANGE, "quality": JPEG_QUALITY_RANGE},
}

__all__ = [
    "GAIN_RANGE",
    "GAUSSIAN_SIGMA_RANGE",
    "JPEG_QUALITY_RANGE",
    "JPEG_SIGMA_RANGE",
    "PARAM_RANGES",
    "READ_SIGMA_RANGE",
    "gaussian_noise",
    "jpeg_noise",
    "poisson_gaussian_noise",
]


def gaussian_noise(clean: np.ndarray, rng: np.random.Generator, *, sigma: float) -> np.ndarray:
    """AWGN of std ``sigma`` / 255."""
    s = check_range("sigma", sigma, GAUSSIAN_SIGMA_RANGE)
    return to_8bit(add_noise(check_image(clean), rng, NoiseParams(sigma=s / 255.0))[0])


def poisson_gaussian_noise(
    clean: np.ndarray, rng: np.random.Generator, *, gain: float, read_sigma: float
) -> np.ndarray:
    """Photon shot noise (exact Poisson counts) plus Gaussian read noise of ``read_sigma``/255."""
    a = check_range("gain", gain, GAIN_RANGE)
    read = check_range("read_sigma", read_sigma, READ_SIGMA_RANGE)
    x = check_image(clean).astype(np.float64)
    shot = rng.poisson(x / a) * a
    noisy = shot + rng.standard_normal(x.shape) * (read / 255.0)
    return to_8bit(noisy)


def jpeg_noise(
    clean: np.ndarray, rng: np.random.Generator, *, sigma: float, quality: int
) -> np.ndarray:
    """AWGN of ``sigma`` / 255, then JPEG compression at ``quality``."""
    s = check_range("sigma", sigma, JPEG_SIGMA_RANGE)
    if isinstance(quality, bool) or int(quality) != quality:
        raise ValueError(f"quality must be an integer, got {quality!r}")
    q = int(check_range("quality", quality, JPEG_QUALITY_RANGE))
    noisy = add_noise(check_image(clean), rng, NoiseParams(sigma=s / 255.0))[0]
    return to_8bit(jpeg_round_trip(noisy, q))
