"""Rain generators for the evaluation grid: two streak models built differently.

Each is ``f(clean, rng, **strength) -> rainy``: float32 (H, W, 3) in [0, 1] in and out, the
output rounded to 8-bit levels, every random draw taken from ``rng``. Angles are degrees from
vertical, positive leaning right as the drops fall (a "\\"), as in ``rain.py``.

* ``screen_rain``: the training generator (``rain.add_rain``) with *fixed* parameters, screen
  composite, no haze. ``layers`` depth layers share ``angle``; layer ``k`` (0 nearest) has
  length ``length * (1 - 0.25 k)``, width ``max(width * (1 - 0.25 k), 0.5)`` and brightness
  ``brightness * (1 - 0.2 k)``, and each gets ``coverage / layers`` of the expected covered
  fraction. Ranges: ``SCREEN_*`` constants.
* ``streak_rain``: the classic image-editor recipe, independent of ``rain.py``'s streak code
  so the derainer is not only scored on the look it was trained on: a uniform noise field
  thresholded to the brightest ``density`` fraction of pixels (drops of random strength),
  a Gaussian blur of ``drop`` px (drop size), a straight motion blur of ``length`` px along the
  fall direction (``eval_blur.line_kernel``, reflect-padded ``blur.convolve``), scaled so an
  isolated full-strength drop peaks at ``intensity``, then an *additive* composite over a haze
  veil ``I t + A (1 - t)`` (``rain.add_haze``, grey airlight ``STREAK_AIRLIGHT``;
  ``transmission`` 1 means no haze). Additive streaks saturate where they overlap, unlike
  screen-blended ones. Ranges: ``STREAK_*`` constants.

Pixel sizes assume photos of about 512 px (the evaluation set); a strength is a look at that
scale, not a physical rain rate.
"""

from __future__ import annotations

import numpy as np

from .blur import convolve
from .eval_blur import gaussian_kernel, line_kernel
from .rain import RainParams, StreakLayer, add_haze, add_rain
from .validate import check_image, check_range, to_8bit

SCREEN_ANGLE_RANGE = (-45.0, 45.0)
SCREEN_LENGTH_RANGE = (5.0, 60.0)
SCREEN_WIDTH_RANGE = (0.5, 3.0)
SCREEN_COVERAGE_RANGE = (0.001, 0.3)
SCREEN_BRIGHTNESS_RANGE = (0.1, 1.0)
SCREEN_LAYERS_RANGE = (1, 3)

STREAK_ANGLE_RANGE = (-45.0, 45.0)
STREAK_LENGTH_RANGE = (5.0, 41.0)
STREAK_DENSITY_RANGE = (0.0005, 0.05)
STREAK_DROP_RANGE = (0.3, 2.0)
STREAK_INTENSITY_RANGE = (0.05, 1.0)
STREAK_TRANSMISSION_RANGE = (0.5, 1.0)
STREAK_AIRLIGHT = 0.9
#: generator name -> parameter -> documented closed range (what the generators enforce).
PARAM_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "screen_rain": {"angle": SCREEN_ANGLE_RANGE, "length": SCREEN_LENGTH_RANGE,
                    "width": SCREEN_WIDTH_RANGE, "coverage": SCREEN_COVERAGE_RANGE,
                    "brightness": SCREEN_BRIGHTNESS_RANGE, "layers": SCREEN_LAYERS_RANGE},
    "streak_rain": {"angle": STREAK_ANGLE_RANGE, "length": STREAK_LENGTH_RANGE,
                    "density": STREAK_DENSITY_RANGE, "drop": STREAK_DROP_RANGE,
                    "intensity": STREAK_INTENSITY_RANGE,
                    "transmission": STREAK_TRANSMISSION_RANGE},
}

__all__ = [
    "PARAM_RANGES",
    "SCREEN_ANGLE_RANGE",
    "SCREEN_BRIGHTNESS_RANGE",
    "SCREEN_COVERAGE_RANGE",
    "SCREEN_LAYERS_RANGE",
    "SCREEN_LENGTH_RANGE",
    "SCREEN_WIDTH_RANGE",
    "STREAK_AIRLIGHT",
    "STREAK_ANGLE_RANGE",
    "STREAK_DENSITY_RANGE",
    "STREAK_DROP_RANGE",
    "STREAK_INTENSITY_RANGE",
    "STREAK_LENGTH_RANGE",
    "STREAK_TRANSMISSION_RANGE",
    "screen_params",
    "screen_rain",
    "streak_field",
    "streak_rain",
]


def screen_params(*, angle: float, length: float, width: float, coverage: float,
                  brightness: float, layers: int = 1) -> RainParams:
    """The fixed ``RainParams`` ``screen_rain`` uses (validated; see the module docstring)."""
    a = check_range("angle", angle, SCREEN_ANGLE_RANGE)
    n = check_range("length", length, SCREEN_LENGTH_RANGE)
    w = check_range("width", width, SCREEN_WIDTH_RANGE)
    c = check_range("coverage", coverage, SCREEN_COVERAGE_RANGE)
    b = check_range("brightness", brightness, SCREEN_BRIGHTNESS_RANGE)
    if isinstance(layers, bool) or int(layers) != layers:
        raise ValueError(f"layers must be an integer, got {layers!r}")
    count = int(check_range("layers", layers, SCREEN_LAYERS_RANGE))
    specs = []
    for k in range(count):
        lk, wk = n * (1.0 - 0.25 * k), max(w * (1.0 - 0.25 * k), 0.5)
        density = c / count / (lk * wk)
        specs.append(StreakLayer(a, lk, wk, density, b * (1.0 - 0.2 * k)))
    return RainParams(tuple(specs), "screen")


def screen_rain(clean: np.ndarray, rng: np.random.Generator, *, angle: float, length: float,
                width: float, coverage: float, brightness: float, layers: int = 1) -> np.ndarray:
    """Screen-blended streak layers from the training generator, at fixed parameters."""
    params = screen_params(angle=angle, length=length, width=width, coverage=coverage,
                           brightness=brightness, layers=layers)
    return to_8bit(add_rain(check_image(clean), rng, params)[0])


def streak_field(shape: tuple[int, int], rng: np.random.Generator, *, angle: float,
                 length: float, density: float, drop: float, intensity: float) -> np.ndarray:
    """The (H, W) streak layer of ``streak_rain``, float32 in [0, 1]."""
    a = check_range("angle", angle, STREAK_ANGLE_RANGE)
    n = check_range("length", length, STREAK_LENGTH_RANGE)
    d = check_range("density", density, STREAK_DENSITY_RANGE)
    s = check_range("drop", drop, STREAK_DROP_RANGE)
    peak = check_range("intensity", intensity, STREAK_INTENSITY_RANGE)
    # line_kernel's angle is counter-clockwise from the x axis: vertical is 90 degrees.
    kernel = convolve(np.pad(gaussian_kernel(s), len(line_kernel(n, 90.0 + a)) // 2),
                      line_kernel(n, 90.0 + a))
    noise = rng.random(shape)
    seeds = np.clip((noise - (1.0 - d)) / d, 0.0, 1.0).astype(np.float32)
    smeared = convolve(seeds, kernel) * np.float32(peak / float(kernel.max()))
    return np.clip(smeared, 0.0, 1.0).astype(np.float32)


def streak_rain(clean: np.ndarray, rng: np.random.Generator, *, angle: float, length: float,
                density: float, drop: float, intensity: float,
                transmission: float = 1.0) -> np.ndarray:
    """Classic additive rain streaks over an optional haze veil."""
    img = check_image(clean)
    t = check_range("transmission", transmission, STREAK_TRANSMISSION_RANGE)
    streaks = streak_field(img.shape[:2], rng, angle=angle, length=length, density=density,
                           drop=drop, intensity=intensity)
    hazy = add_haze(img, t, STREAK_AIRLIGHT) if t < 1.0 else img
    return to_8bit(hazy + streaks[..., None])
