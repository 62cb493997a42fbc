"""Seeded synthetic degradations: the training inputs made from clean photographs.

Each task maps to a function ``f(clean, rng) -> degraded`` on float32 RGB (H, W, 3) in
[0, 1]; everything random comes from the ``numpy.random.Generator`` passed in, so the same
seed gives the same image (per-sample seeds are what make datasets resumable). The
parameter-returning primitives (``add_rain``, ``add_noise``, ``motion_blur``) are exported for
logging and tests; see their modules for the documented ranges.

``degrade(task, clean, rng, evaluation=..., variant=...)`` is the one entry point. A task may
have named training variants (``VARIANTS``), e.g. ``deblur``'s ``mild`` blur for a curriculum.
The evaluation generator fixes the parameters where benchmarks do (denoising at sigma =
25/255); deraining and deblurring have no standard fixed setting, so evaluation draws them from
the seeded rng like training does (deblurring from camera-shake kernels only, the set's original
blur; training draws from a wider kernel mix). Outputs are rounded to 8-bit levels by default,
because served inputs are always 8-bit images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .blur import (
    LINEAR_MIX,
    MILD_MIX,
    BlurParams,
    convolve,
    motion_blur,
    random_motion_kernel,
    sample_blur_params,
    sample_shake_params,
)
from .noise import EVAL_SIGMA, NoiseParams, add_noise, eval_noise_params, sample_noise_params
from .rain import RainParams, StreakLayer, add_haze, add_rain, rain_layer, sample_rain_params

Degradation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _derain(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return add_rain(clean, rng)[0]


def _denoise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return add_noise(clean, rng)[0]


def _denoise_eval(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return add_noise(clean, rng, eval_noise_params())[0]


def _deblur(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return motion_blur(clean, rng)[0]


def _deblur_mild(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return motion_blur(clean, rng, mix=MILD_MIX)[0]


def _deblur_linear(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return motion_blur(clean, rng, mix=LINEAR_MIX)[0]


def _deblur_eval(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return motion_blur(clean, rng, sample_shake_params(rng))[0]


DEGRADATIONS: dict[str, Degradation] = {
    "derain": _derain,
    "denoise": _denoise,
    "deblur": _deblur,
}
EVAL_DEGRADATIONS: dict[str, Degradation] = {**DEGRADATIONS, "denoise": _denoise_eval,
                                              "deblur": _deblur_eval}
TASKS: tuple[str, ...] = tuple(DEGRADATIONS)
VARIANTS: dict[str, dict[str, Degradation]] = {
    "deblur": {"mild": _deblur_mild, "linear": _deblur_linear},
}
"""Named alternatives to a task's training degradation (``train --degradation``)."""


def check_variant(task: str, variant: str | None, evaluation: bool = False) -> None:
    """Raise ValueError naming the choices unless ``variant`` is None or one of ``task``'s
    (training only: evaluation has its own generator)."""
    if variant is not None and variant not in VARIANTS.get(task, {}):
        choices = ", ".join(VARIANTS.get(task, {})) or "none"
        raise ValueError(f"unknown {task} degradation {variant!r} (variants: {choices})")
    if variant is not None and evaluation:
        raise ValueError("a degradation variant is a training generator; evaluation has its own")


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an (H, W, 3) float image in [0, 1]; returns it as float32."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected float values in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError("image values must lie in [0, 1]")
    return arr


def degrade(
    task: str,
    clean: np.ndarray,
    rng: np.random.Generator,
    *,
    evaluation: bool = False,
    quantize: bool = True,
    variant: str | None = None,
) -> np.ndarray:
    """Degrade ``clean`` for ``task`` ("derain", "denoise", "deblur"); float32 (H, W, 3).
    ``variant``: one of the task's ``VARIANTS`` instead of its training degradation."""
    table = EVAL_DEGRADATIONS if evaluation else DEGRADATIONS
    if task not in table:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    check_variant(task, variant, evaluation)
    fn = table[task] if variant is None else VARIANTS[task][variant]
    out = fn(check_image(clean), rng)
    if quantize:
        out = np.round(out * 255.0) / np.float32(255.0)
    return out.astype(np.float32, copy=False)


__all__ = [
    "DEGRADATIONS",
    "EVAL_DEGRADATIONS",
    "EVAL_SIGMA",
    "TASKS",
    "VARIANTS",
    "BlurParams",
    "Degradation",
    "NoiseParams",
    "RainParams",
    "StreakLayer",
    "add_haze",
    "add_noise",
    "add_rain",
    "check_image",
    "check_variant",
    "convolve",
    "degrade",
    "eval_noise_params",
    "motion_blur",
    "rain_layer",
    "random_motion_kernel",
    "sample_blur_params",
    "sample_noise_params",
    "sample_rain_params",
    "sample_shake_params",
]
