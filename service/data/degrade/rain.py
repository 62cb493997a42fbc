"""Synthetic rain streaks (and optional haze) for training the deraining network.

Model (the Rain100/Rain13K family is made the same way: streak layers on a clean photo):

1. **Haze** (probability 0.3): the atmospheric veil ``I = J * t + A * (1 - t)`` with
   transmission ``t`` in [0.65, 0.92] and grey airlight ``A`` in [0.7, 1.0]. Heavy rain is
   always hazy far away (Li et al. 2019, "Heavy rain image restoration"); the network learns
   to remove both.
2. **Streak layers** (1-3, nearer layers longer, wider and brighter): a sparse random field
   (each pixel a seed with probability ``density``, seed strength uniform in [0.4, 1])
   is smeared along the fall direction with an anti-aliased line kernel -- the motion blur
   a falling drop makes during the exposure -- giving streaks of the layer's length and width.
   Per layer:

   * ``angle``: -30..30 degrees from vertical, shared by the layers up to +-3 degrees of
     jitter. Positive angles lean right as they fall: the streak direction in image
     coordinates (x right, y down) is ``(sin a, cos a)``, i.e. a "\\" shape;
   * a **strength regime** (``REGIMES``), drawn first, sets the other ranges. Light rain --
     thin, sparse, faint streaks that leave the photo at 25-30 dB -- is as likely as heavy
     rain: a network trained on heavy rain alone learns to smooth every input, and makes a
     lightly rainy photo worse than it was;
   * ``length``: 8-40 px; ``width``: 0.6-3 px (sub-pixel, the kernel is anti-aliased);
   * ``density``: seeds per pixel, drawn so the expected covered fraction
     ``density * length * width`` is 0.3-25 % (light to heavy rain);
   * ``brightness``: peak streak intensity 0.15-0.9.

   The seed field wraps around the image edges (FFT convolution), which behaves like drops
   entering from outside the frame.
3. **Composite**, chosen at random: *screen* ``1 - (1 - I)(1 - R)`` (rain brightens but
   never saturates; the Rain100 look) or *additive* ``clip(I + R)`` (bright, saturating
   streaks; the Rain800/Rain1400 look). Both only ever brighten the image.

Streaks are achromatic (drops reflect the sky). Lengths are in pixels, so they assume the
pool's resolution (short side about 1024, see ``service.data.pool``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ANGLE_RANGE = (-30.0, 30.0)
HAZE_PROBABILITY = 0.3
TRANSMISSION_RANGE = (0.65, 0.92)
AIRLIGHT_RANGE = (0.7, 1.0)

Composite = Literal["screen", "additive"]


@dataclass(frozen=True)
class RainRegime:
    """The ranges one strength of rain draws from; ``max_layers`` caps the depth layers."""

    length: tuple[float, float]
    width: tuple[float, float]
    coverage: tuple[float, float]
    brightness: tuple[float, float]
    max_layers: int


REGIMES: dict[str, RainRegime] = {
    "light": RainRegime((8.0, 30.0), (0.6, 1.5), (0.003, 0.03), (0.15, 0.5), 2),
    "medium": RainRegime((10.0, 35.0), (1.0, 2.5), (0.02, 0.10), (0.3, 0.75), 3),
    "heavy": RainRegime((10.0, 40.0), (1.0, 3.0), (0.08, 0.25), (0.35, 0.9), 3),
}
REGIME_WEIGHTS: dict[str, float] = {"light": 0.4, "medium": 0.3, "heavy": 0.3}
# The union of the regimes' ranges: what any drawn layer satisfies.
LENGTH_RANGE = (8.0, 40.0)
WIDTH_RANGE = (0.6, 3.0)
COVERAGE_RANGE = (0.003, 0.25)
BRIGHTNESS_RANGE = (0.15, 0.9)


@dataclass(frozen=True)
class StreakLayer:
    """One depth layer of streaks; ``angle`` in degrees from vertical, sizes in pixels."""

    angle: float
    length: float
    width: float
    density: float
    brightness: float


@dataclass(frozen=True)
class RainParams:
    layers: tuple[StreakLayer, ...]
    composite: Composite
    transmission: float | None = None  # None: no haze
    airlight: float = 1.0


def sample_rain_params(rng: np.random.Generator, regime: str | None = None) -> RainParams:
    """Draw a strength regime (``REGIME_WEIGHTS``, unless given), then rain from its ranges."""
    if regime is None:
        names = list(REGIME_WEIGHTS)
        weights = np.array([REGIME_WEIGHTS[n] for n in names])
        regime = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    if regime not in REGIMES:
        raise ValueError(f"unknown rain regime {regime!r}; expected one of {', '.join(REGIMES)}")
    r = REGIMES[regime]
    base_angle = rng.uniform(*ANGLE_RANGE)
    n_layers = int(rng.integers(1, r.max_layers + 1))
    # Sorted so layer 0 is the nearest: longest, widest and brightest.
    lengths = np.sort(rng.uniform(*r.length, n_layers))[::-1]
    widths = np.sort(rng.uniform(*r.width, n_layers))[::-1]
    brightness = np.sort(rng.uniform(*r.brightness, n_layers))[::-1]
    layers = []
    for i in range(n_layers):
        coverage = rng.uniform(*r.coverage) / n_layers
        angle = float(np.clip(base_angle + rng.uniform(-3.0, 3.0), *ANGLE_RANGE))
        length, width = float(lengths[i]), float(widths[i])
        layers.append(
            StreakLayer(angle, length, width, coverage / (length * width), float(brightness[i]))
        )
    composite: Composite = "screen" if rng.random() < 0.5 else "additive"
    transmission = airlight = None
    if rng.random() < HAZE_PROBABILITY:
        transmission = float(rng.uniform(*TRANSMISSION_RANGE))
        airlight = float(rng.uniform(*AIRLIGHT_RANGE))
    return RainParams(tuple(layers), composite, transmission, airlight or 1.0)


def line_kernel(angle: float, length: float, width: float) -> np.ndarray:
    """An anti-aliased line segment (peak 1) along ``(sin a, cos a)``, ends tapered.

    Pixel value = coverage of a ``width``-wide bar (1 inside, linear 1-px edge), times a
    linear fade over the last 20 % of the length at each end, so streaks do not end bluntly.
    """
    a = np.deg2rad(angle)
    d = np.array([np.sin(a), np.cos(a)])  # (x, y)
    r = int(np.ceil(length / 2 + width / 2)) + 1
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    along = x * d[0] + y * d[1]
    across = np.abs(-x * d[1] + y * d[0])
    half = length / 2
    t = np.clip(along, -half, half)
    dist = np.hypot(along - t, across)
    bar = np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)
    taper = np.clip((half - np.abs(along)) / max(0.2 * length, 1.0) + 0.15, 0.0, 1.0)
    return (bar * taper).astype(np.float32)


def _circular_convolve(field: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Circular convolution; the centred kernel is wrapped onto the grid (any image size)."""
    h, w = field.shape
    kh, kw = kernel.shape
    k = np.zeros((h, w), dtype=np.float64)
    ys = (np.arange(kh) - kh // 2) % h
    xs = (np.arange(kw) - kw // 2) % w
    np.add.at(k, (ys[:, None], xs[None, :]), kernel)
    return np.fft.irfft2(np.fft.rfft2(field) * np.fft.rfft2(k), s=(h, w))


def streak_layer(
    shape: tuple[int, int], layer: StreakLayer, rng: np.random.Generator
) -> np.ndarray:
    """One layer of streaks, (H, W) float32 in [0, 1]."""
    h, w = shape
    seeds = (rng.random((h, w)) < layer.density) * rng.uniform(0.4, 1.0, (h, w))
    smeared = _circular_convolve(seeds, line_kernel(layer.angle, layer.length, layer.width))
    return np.clip(smeared * layer.brightness, 0.0, 1.0).astype(np.float32)


def rain_layer(shape: tuple[int, int], params: RainParams, rng: np.random.Generator) -> np.ndarray:
    """All streak layers of ``params`` combined (screen), (H, W) float32 in [0, 1]."""
    total = np.zeros(shape, dtype=np.float32)
    for layer in params.layers:
        total = 1.0 - (1.0 - total) * (1.0 - streak_layer(shape, layer, rng))
    return total


def add_haze(image: np.ndarray, transmission: float, airlight: float) -> np.ndarray:
    """The atmospheric scattering model ``I * t + A * (1 - t)`` with a grey airlight."""
    return (image * transmission + airlight * (1.0 - transmission)).astype(np.float32)


def composite(image: np.ndarray, streaks: np.ndarray, mode: Composite) -> np.ndarray:
    """Put an (H, W) streak layer on an (H, W, 3) image; both modes only brighten."""
    s = streaks[..., None]
    if mode == "screen":
        out = 1.0 - (1.0 - image) * (1.0 - s)
    elif mode == "additive":
        out = image + s
    else:
        raise ValueError(f"unknown composite mode {mode!r}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def add_rain(
    clean: np.ndarray, rng: np.random.Generator, params: RainParams | None = None
) -> tuple[np.ndarray, RainParams]:
    """Return ``(rainy, params)``: optional haze, then streak layers composited on top."""
    if params is None:
        params = sample_rain_params(rng)
    img = np.asarray(clean, dtype=np.float32)
    if params.transmission is not None:
        img = add_haze(img, params.transmission, params.airlight)
    streaks = rain_layer(img.shape[:2], params, rng)
    return composite(img, streaks, params.composite), params
