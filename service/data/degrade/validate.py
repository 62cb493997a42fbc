"""Shared checks for the evaluation-cell generators (``eval_noise``, ``eval_rain``, ``eval_blur``).

A robustness grid is only comparable between runs if every cell means the same thing each
time, so each generator declares its parameter ranges as module constants and refuses values
outside them instead of silently clipping; and every output is rounded to 8-bit levels,
because a served input is always an 8-bit image.
"""

from __future__ import annotations

import numpy as np

from . import check_image

Range = tuple[float, float]

__all__ = ["Range", "check_image", "check_in", "check_range", "to_8bit"]


def check_range(name: str, value: float, bounds: Range) -> float:
    """``value`` as a float if it lies in the closed interval ``bounds``, else ValueError."""
    lo, hi = bounds
    number = float(value)
    if not np.isfinite(number) or not lo <= number <= hi:
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}], got {value!r}")
    return number


def check_in(name: str, value: object, allowed: tuple[object, ...]) -> None:
    """ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def to_8bit(image: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to the 256 levels of an 8-bit image; float32 out."""
    out = np.round(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0)
    return (out / np.float32(255.0)).astype(np.float32, copy=False)
