"""Blur generators for the evaluation grid: linear motion, camera shake, defocus, Gaussian.

Each is ``f(clean, rng, **strength) -> blurred``: float32 (H, W, 3) in [0, 1] in and out,
convolved with ``blur.convolve`` (the training primitive: reflect-padded FFT convolution),
then Gaussian sensor noise of ``noise_sigma`` / 255 (``NOISE_SIGMA_RANGE``; the grid uses 1
level, because real blurred frames are never noise-free and a noise-free cell would not
depend on the seed at all), rounded to 8-bit levels.

Kernels, all normalised to sum 1 and centred (odd size, centre of mass on the centre pixel),
so blurring never shifts the image:

* ``line_kernel(length, angle)``: uniform motion over ``length`` px (``LENGTH_RANGE``) along
  ``angle`` degrees counter-clockwise from the x axis (``ANGLE_RANGE``; 0 is horizontal, 90
  vertical). Training only ever saw random trajectories (``blur.random_motion_kernel``), so
  straight lines at any angle test generalisation rather than recall. Rasterised by bilinear
  splatting of densely sampled points, the same sub-pixel raster as the trajectory kernels.
* camera shake: ``blur.random_motion_kernel(rng, size)``, a random smooth trajectory, ``size``
  odd in ``SHAKE_SIZE_RANGE`` (the training generator at a fixed size).
* ``disk_kernel(radius)``: a defocused lens's pillbox, edge pixels weighted by their covered
  area (8 x 8 supersampling); ``radius`` in ``DEFOCUS_RADIUS_RANGE``.
* ``gaussian_kernel(sigma)``: radius ``ceil(3 sigma)``; ``sigma`` in ``GAUSSIAN_SIGMA_RANGE``
  (atmospheric or slight focus blur).
"""

from __future__ import annotations

import numpy as np

from .blur import KERNEL_SIZE_RANGE, _rasterise, convolve, random_motion_kernel
from .validate import check_image, check_range, to_8bit

LENGTH_RANGE = (3.0, 41.0)
ANGLE_RANGE = (-180.0, 180.0)
SHAKE_SIZE_RANGE = KERNEL_SIZE_RANGE
DEFOCUS_RADIUS_RANGE = (1.0, 8.0)
GAUSSIAN_SIGMA_RANGE = (0.3, 5.0)
NOISE_SIGMA_RANGE = (0.0, 5.0)
SUPERSAMPLE = 8
#: generator name -> parameter -> documented closed range (what the generators enforce).
PARAM_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "linear_motion_blur": {"length": LENGTH_RANGE, "angle": ANGLE_RANGE,
                           "noise_sigma": NOISE_SIGMA_RANGE},
    "camera_shake_blur": {"size": SHAKE_SIZE_RANGE, "noise_sigma": NOISE_SIGMA_RANGE},
    "defocus_blur": {"radius": DEFOCUS_RADIUS_RANGE, "noise_sigma": NOISE_SIGMA_RANGE},
    "gaussian_blur": {"sigma": GAUSSIAN_SIGMA_RANGE, "noise_sigma": NOISE_SIGMA_RANGE},
}

__all__ = [
    "ANGLE_RANGE",
    "DEFOCUS_RADIUS_RANGE",
    "GAUSSIAN_SIGMA_RANGE",
    "LENGTH_RANGE",
    "NOISE_SIGMA_RANGE",
    "PARAM_RANGES",
    "SHAKE_SIZE_RANGE",
    "camera_shake_blur",
    "defocus_blur",
    "disk_kernel",
    "gaussian_blur",
    "gaussian_kernel",
    "line_kernel",
    "linear_motion_blur",
]


def line_kernel(length: float, angle: float) -> np.ndarray:
    """A (K, K) uniform line of ``length`` px along ``angle`` degrees (y axis pointing up)."""
    n = check_range("length", length, LENGTH_RANGE)
    a = np.deg2rad(check_range("angle", angle, ANGLE_RANGE))
    half = (n - 1.0) / 2.0  # a 7-px blur spreads a point over 7 pixel centres
    size = 2 * int(np.ceil(half)) + 3  # +1 px each side for the bilinear splat
    t = np.linspace(-half, half, int(np.ceil(n * SUPERSAMPLE)) + 1)
    points = t * np.cos(a) - 1j * t * np.sin(a)  # image rows grow downwards
    kernel = _rasterise(points, np.full(t.shape, 1.0 / t.size), size)
    return (kernel / kernel.sum()).astype(np.float32)


def disk_kernel(radius: float) -> np.ndarray:
    """A (K, K) pillbox of ``radius`` px, anti-aliased by area coverage."""
    r = check_range("radius", radius, DEFOCUS_RADIUS_RANGE)
    c = int(np.ceil(r))
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    grid = np.arange(-c, c + 1)
    ys = (grid[:, None] + offsets[None, :]).ravel()
    inside = (ys[:, None] ** 2 + ys[None, :] ** 2) <= r * r
    size = grid.size
    cover = inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
    return (cover / cover.sum()).astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A (K, K) isotropic Gaussian of std ``sigma`` px, truncated at 3 sigma."""
    s = check_range("sigma", sigma, GAUSSIAN_SIGMA_RANGE)
    r = max(1, int(np.ceil(3 * s)))
    taps = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * s * s))
    kernel = np.outer(taps, taps)
    return (kernel / kernel.sum()).astype(np.float32)


def _blur(clean: np.ndarray, kernel: np.ndarray, rng: np.random.Generator,
          noise_sigma: float) -> np.ndarray:
    sigma = check_range("noise_sigma", noise_sigma, NOISE_SIGMA_RANGE)
    out = convolve(check_image(clean), kernel)
    if sigma > 0:
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return to_8bit(out)


def linear_motion_blur(clean: np.ndarray, rng: np.random.Generator, *, length: float,
                       angle: float, noise_sigma: float = 1.0) -> np.ndarray:
    """Straight-line motion blur (``line_kernel``), then sensor noise."""
    return _blur(clean, line_kernel(length, angle), rng, noise_sigma)


def camera_shake_blur(clean: np.ndarray, rng: np.random.Generator, *, size: int,
                      noise_sigma: float = 1.0) -> np.ndarray:
    """A random camera-shake trajectory of ``size`` px drawn from ``rng``, then sensor noise."""
    if isinstance(size, bool) or int(size) != size:
        raise ValueError(f"size must be an integer, got {size!r}")
    check_range("size", size, SHAKE_SIZE_RANGE)
    return _blur(clean, random_motion_kernel(rng, int(size)), rng, noise_sigma)


def defocus_blur(clean: np.ndarray, rng: np.random.Generator, *, radius: float,
                 noise_sigma: float = 1.0) -> np.ndarray:
    """Out-of-focus (pillbox) blur, then sensor noise."""
    return _blur(clean, disk_kernel(radius), rng, noise_sigma)


def gaussian_blur(clean: np.ndarray, rng: np.random.Generator, *, sigma: float,
                  noise_sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur, then sensor noise."""
    return _blur(clean, gaussian_kernel(sigma), rng, noise_sigma)
