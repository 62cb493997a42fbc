"""Synthetic sensor noise for training and evaluating the denoiser.

Two models, both on float32 RGB in [0, 1] and clipped back to [0, 1] afterwards:

* **Gaussian (AWGN)**: ``y = x + n``, ``n ~ N(0, sigma^2)`` i.i.d. per pixel and channel.
  Training draws ``sigma`` uniformly in ``[5, 50] / 255``, which spans the sigma = 15/25/50
  benchmarks (CBSD68, Kodak24) so one network covers every level; evaluation uses the fixed
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

SIGMA_RANGE = (5.0 / 255.0, 50.0 / 255.0)
SHOT_RANGE = (5e-4, 1e-2)
POISSON_PROBABILITY = 0.3
EVAL_SIGMA = 25.0 / 255.0


@dataclass(frozen=True)
class NoiseParams:
    """``sigma``: Gaussian std in [0, 1] units; ``shot``: variance per unit of intensity."""

    sigma: float
    shot: float = 0.0


def sample_noise_params(
    rng: np.random.Generator,
    *,
    sigma_range: tuple[float, float] = SIGMA_RANGE,
    poisson_probability: float = POISSON_PROBABILITY,
    shot_range: tuple[float, float] = SHOT_RANGE,
) -> NoiseParams:
    """Draw training-time noise parameters (documented ranges in the module docstring)."""
    sigma = float(rng.uniform(*sigma_range))
    shot = float(rng.uniform(*shot_range)) if rng.random() < poisson_probability else 0.0
    return NoiseParams(sigma=sigma, shot=shot)


def add_noise(
    clean: np.ndarray, rng: np.random.Generator, params: NoiseParams | None = None
) -> tuple[np.ndarray, NoiseParams]:
    """Return ``(noisy, params)``; ``params`` are drawn from ``rng`` when not given."""
    if params is None:
        params = sample_noise_params(rng)
    x = np.asarray(clean, dtype=np.float32)
    std = np.sqrt(params.shot * x + params.sigma**2, dtype=np.float32)
    noise = rng.standard_normal(x.shape, dtype=np.float32) * std
    return np.clip(x + noise, 0.0, 1.0).astype(np.float32, copy=False), params


def eval_noise_params(sigma: float = EVAL_SIGMA) -> NoiseParams:
    """The fixed evaluation setting: plain AWGN at ``sigma`` (25/255 by default)."""
    return NoiseParams(sigma=sigma, shot=0.0)
