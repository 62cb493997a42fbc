"""Low-resolution inputs for ×4 super-resolution: bicubic, and Real-ESRGAN's second order.

Why two generators: a network trained on bicubic downsampling alone (the classic SISR setting)
sharpens clean downscales but amplifies the blur, noise and JPEG blocks of real photos. Real-
ESRGAN (Wang et al., 2021) models real inputs as the classical chain blur → resize → noise →
JPEG applied **twice** with independently drawn parameters, then the final resize to the
target scale; this is that chain with ranges close to the paper's (simplified: isotropic and
anisotropic Gaussian kernels only, no sinc filter). Everything random comes from the
``numpy.random.Generator`` passed in, so a seed gives the same pair (resumable datasets).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .blur import convolve

SCALE = 4
RESAMPLES = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.BOX)


@dataclass(frozen=True)
class Order:
    """The parameter ranges of one degradation round."""

    blur_sigma: tuple[float, float]
    resize: tuple[float, float]
    noise_sigma: tuple[float, float]  # on the 0..255 scale
    poisson_share: float
    jpeg_quality: tuple[int, int]


FIRST = Order(blur_sigma=(0.2, 3.0), resize=(0.15, 1.5), noise_sigma=(1.0, 30.0),
              poisson_share=0.4, jpeg_quality=(30, 95))
SECOND = Order(blur_sigma=(0.2, 1.5), resize=(0.3, 1.2), noise_sigma=(1.0, 25.0),
               poisson_share=0.4, jpeg_quality=(30, 95))


def resize(image: np.ndarray, height: int, width: int,
           resample: Image.Resampling = Image.Resampling.BICUBIC,
           box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Float (H, W, 3) in [0, 1] resized per channel in float (no 8-bit rounding).

    ``box`` (left, top, right, bottom in source pixels, as PIL's) resizes only that region, at
    the scale it has in the whole resize: a crop of a rescaled photo without rescaling all of it.
    """
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F")
                   .resize((width, height), resample, box=box), dtype=np.float32)
        for c in range(image.shape[2])
    ]
    return np.clip(np.stack(planes, axis=2), 0.0, 1.0)


def bicubic_down(hr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """The classic SISR input: bicubic downsampling by ``scale`` (sides must divide)."""
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"{h}x{w} is not divisible by the scale {scale}")
    return resize(hr, h // scale, w // scale)


def gaussian_kernel(rng: np.random.Generator, sigma_range: tuple[float, float]) -> np.ndarray:
    """Isotropic or (half the time) anisotropic rotated Gaussian, 21×21 at most."""
    sx = rng.uniform(*sigma_range)
    sy = sx if rng.random() < 0.5 else rng.uniform(*sigma_range)
    theta = rng.uniform(0, np.pi)
    r = int(min(10, max(1, np.ceil(3 * max(sx, sy)))))
    ys, xs = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * xs + s * ys, -s * xs + c * ys
    kernel = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return (kernel / kernel.sum()).astype(np.float32)


def add_noise(image: np.ndarray, rng: np.random.Generator, order: Order) -> np.ndarray:
    """Gaussian (colour or gray) or Poisson noise, as Real-ESRGAN mixes them."""
    if rng.random() < order.poisson_share:
        peak = 10 ** rng.uniform(1.0, 3.0)  # photons at white: strong to mild shot noise
        noisy = rng.poisson(np.clip(image, 0, 1) * peak) / peak
    else:
        sigma = rng.uniform(*order.noise_sigma) / 255.0
        shape = image.shape if rng.random() < 0.6 else (*image.shape[:2], 1)
        noisy = image + rng.normal(0.0, sigma, shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / np.float32(255.0)


def degrade_once(image: np.ndarray, rng: np.random.Generator, order: Order,
                 out_size: tuple[int, int] | None = None) -> np.ndarray:
    """blur → random resize (or to ``out_size``) → noise → JPEG."""
    image = convolve(image, gaussian_kernel(rng, order.blur_sigma))
    h, w = image.shape[:2]
    if out_size is None:
        factor = rng.uniform(*order.resize)
        out_size = (max(4, round(h * factor)), max(4, round(w * factor)))
    image = resize(image, *out_size, RESAMPLES[int(rng.integers(len(RESAMPLES)))])
    image = add_noise(image, rng, order)
    return jpeg(image, int(rng.integers(order.jpeg_quality[0], order.jpeg_quality[1] + 1)))


def second_order(hr: np.ndarray, rng: np.random.Generator, scale: int = SCALE) -> np.ndarray:
    """The LR input of a Real-ESRGAN pair: two degradation rounds, then ×1/``scale``.

    The second round's resize lands on the final size, as in the paper's pipeline (which
    resizes to the target and compresses last). Returns float32 (H/scale, W/scale, 3) on
    8-bit levels (the JPEG step decodes to them).
    """
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"{h}x{w} is not divisible by the scale {scale}")
    image = degrade_once(np.asarray(hr, dtype=np.float32), rng, FIRST)
    return degrade_once(image, rng, SECOND, out_size=(h // scale, w // scale))


LR_GENERATORS = {"bicubic": lambda hr, rng, scale=SCALE: bicubic_down(hr, scale),
                 "second-order": second_order}
