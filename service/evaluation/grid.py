"""The robustness grid: for each task, an ordered list of named degradation cells.

One synthetic setting per task (``pairs.synthetic_pairs``) says little about how a model
copes with the inputs users actually send: lighter or heavier noise than it was trained on,
camera noise that is not Gaussian, JPEG artefacts, rain drawn by another generator, straight
motion or defocus instead of shake. Each cell is one fixed degradation of the evaluation
photos, so the same cell measured on two checkpoints is directly comparable.

Cells (strength units in each generator's module: ``service.data.degrade.eval_noise``,
``eval_rain``, ``eval_blur``; ``validate`` checks every parameter against its range):

* every task starts with ``identity``: the clean photo itself. Its input PSNR is infinite;
  what it measures is how much a model damages an image that needs no restoration.
* **denoise**: AWGN at sigma = 5, 10, 15, 25, 35, 50 (/255); Poisson-Gaussian camera noise at
  two strengths (real Poisson counts plus read noise); Gaussian noise then JPEG (quality 60
  and 30).
* **derain**: light / medium / heavy for two generators: ``screen`` (the training generator
  at fixed settings, screen blend; inputs at 25.6 / 21.3 / 17.0 dB RGB PSNR on the 256 px
  centre crops at seed 0) and ``streak`` (classic thresholded-noise streaks, additive, haze on
  medium and heavy; 26.2 / 21.7 / 17.4 dB), each strength at its own angle and length.
* **deblur**: straight motion of 7, 11, 15, 19 and 25 px, each at two angles (none of them a
  training kernel: training only saw random shake trajectories); camera shake of 15 and 25 px
  (a random trajectory per image); defocus discs of radius 2, 4 and 6 px; Gaussian blur of
  sigma 1, 2 and 3 px. All with 1 level of sensor noise.

Seeding: image ``i`` (its index in ``EVALUATION_NAMES``, so ``limit`` keeps the others'
inputs unchanged) of cell ``c`` (its index in the task's list) uses
``np.random.default_rng([seed, c, i])``: a distinct stream per (cell, image), so cells are
independent and the grid is the same on every run and machine. Cell indices are part of that
contract: append new cells at the end of a task's list so earlier cells keep their inputs.

Like ``synthetic_pairs``, photos are degraded at full size and then centre-cropped to
``size``, so crops see no border effects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from service.data.degrade import eval_blur, eval_noise, eval_rain
from service.data.degrade.eval_blur import (
    camera_shake_blur,
    defocus_blur,
    gaussian_blur,
    linear_motion_blur,
)
from service.data.degrade.eval_noise import gaussian_noise, jpeg_noise, poisson_gaussian_noise
from service.data.degrade.eval_rain import screen_rain, streak_rain
from service.data.degrade.validate import check_image, to_8bit
from service.evaluation.pairs import Pair, center_crop

Degrader = Callable[..., np.ndarray]

__all__ = [
    "GRID",
    "IDENTITY",
    "PARAM_RANGES",
    "Cell",
    "Degrader",
    "cell_rng",
    "cells_for",
    "grid_pairs",
    "identity",
]

IDENTITY = "identity"
#: generator name -> parameter -> the documented range its module enforces.
PARAM_RANGES: Mapping[str, Mapping[str, tuple[float, float]]] = MappingProxyType(
    {**eval_noise.PARAM_RANGES, **eval_rain.PARAM_RANGES, **eval_blur.PARAM_RANGES}
)


def identity(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clean photo, unchanged (already 8-bit for the evaluation photos)."""
    return to_8bit(check_image(clean))


@dataclass(frozen=True, eq=False)
class Cell:
    """One grid cell: ``generator(clean, rng, **params)``; ``family`` groups cells for targets."""

    name: str
    family: str
    generator: Degrader = field(repr=False)
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def apply(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.generator(clean, rng, **self.params)

    def describe(self) -> str:
        """``key=value`` pairs, as the tables print them (empty for identity)."""
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in self.params.items())

    @property
    def is_identity(self) -> bool:
        return self.family == IDENTITY

    def ranges(self) -> Mapping[str, tuple[float, float]]:
        """The documented range of each parameter of this cell's generator."""
        return PARAM_RANGES.get(self.generator.__name__, {})


def _identity() -> Cell:
    return Cell(IDENTITY, IDENTITY, identity)


def _denoise() -> tuple[Cell, ...]:
    gaussian = [Cell(f"gaussian-{s}", "gaussian", gaussian_noise, {"sigma": float(s)})
                for s in (5, 10, 15, 25, 35, 50)]
    return (
        _identity(),
        *gaussian,
        Cell("poisson-gaussian-low", "poisson-gaussian", poisson_gaussian_noise,
             {"gain": 0.004, "read_sigma": 5.0}),
        Cell("poisson-gaussian-high", "poisson-gaussian", poisson_gaussian_noise,
             {"gain": 0.015, "read_sigma": 10.0}),
        Cell("jpeg-q60", "jpeg", jpeg_noise, {"sigma": 15.0, "quality": 60}),
        Cell("jpeg-q30", "jpeg", jpeg_noise, {"sigma": 25.0, "quality": 30}),
    )


def _derain() -> tuple[Cell, ...]:
    screen = {
        "light": {"angle": 10.0, "length": 20.0, "width": 1.0, "coverage": 0.07,
                  "brightness": 0.55, "layers": 1},
        "medium": {"angle": -15.0, "length": 25.0, "width": 1.5, "coverage": 0.12,
                   "brightness": 0.75, "layers": 2},
        "heavy": {"angle": 5.0, "length": 30.0, "width": 2.0, "coverage": 0.25,
                  "brightness": 0.9, "layers": 3},
    }
    streak = {
        "light": {"angle": -20.0, "length": 15.0, "density": 0.0035, "drop": 0.5,
                  "intensity": 0.4, "transmission": 1.0},
        "medium": {"angle": 25.0, "length": 25.0, "density": 0.0015, "drop": 0.7,
                   "intensity": 0.5, "transmission": 0.92},
        "heavy": {"angle": -35.0, "length": 35.0, "density": 0.001, "drop": 1.0,
                  "intensity": 0.6, "transmission": 0.85},
    }
    return (
        _identity(),
        *(Cell(f"screen-{k}", "rain-screen", screen_rain, p) for k, p in screen.items()),
        *(Cell(f"streak-{k}", "rain-streak", streak_rain, p) for k, p in streak.items()),
    )


def _deblur() -> tuple[Cell, ...]:
    motion = [(7, 0), (7, 60), (11, 30), (11, 135), (15, 90), (15, 160), (19, 15), (19, 110),
              (25, 45), (25, 170)]
    return (
        _identity(),
        *(Cell(f"motion-{n}@{a}", "motion", linear_motion_blur,
               {"length": float(n), "angle": float(a)}) for n, a in motion),
        *(Cell(f"shake-{k}", "shake", camera_shake_blur, {"size": k}) for k in (15, 25)),
        *(Cell(f"defocus-{r}", "defocus", defocus_blur, {"radius": float(r)})
          for r in (2, 4, 6)),
        *(Cell(f"gaussian-{s}", "gaussian-blur", gaussian_blur, {"sigma": float(s)})
          for s in (1, 2, 3)),
    )


GRID: Mapping[str, tuple[Cell, ...]] = MappingProxyType(
    {"denoise": _denoise(), "derain": _derain(), "deblur": _deblur()}
)


def cells_for(task: str) -> tuple[Cell, ...]:
    """The task's cells in grid order; ValueError for a task without a grid."""
    if task not in GRID:
        raise ValueError(f"no robustness grid for task {task!r}; expected one of "
                         f"{', '.join(GRID)}")
    return GRID[task]


def cell_rng(seed: int, cell_index: int, image_index: int) -> np.random.Generator:
    """The generator of one (cell, image); ValueError for a negative seed or index."""
    key = (int(seed), int(cell_index), int(image_index))
    if min(key) < 0:
        raise ValueError(f"grid seeds and indices must be >= 0, got {key}")
    return np.random.default_rng(list(key))


def grid_pairs(
    task: str,
    cell_index: int,
    *,
    seed: int = 0,
    size: int | None = None,
    limit: int | None = None,
    images: Mapping[str, np.ndarray] | None = None,
) -> list[Pair]:
    """The evaluation pairs of one cell (default images: the scikit-image photos)."""
    from service.data.evaluation import evaluation_images

    cells = cells_for(task)
    if not 0 <= cell_index < len(cells):
        raise ValueError(f"{task} has cells 0..{len(cells) - 1}, got {cell_index}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if images is None:
        images = evaluation_images()
    cell = cells[cell_index]
    pairs = []
    for i, (name, clean) in enumerate(images.items()):
        if limit is not None and i >= limit:
            break
        degraded = cell.apply(clean, cell_rng(seed, cell_index, i))
        pairs.append(Pair(name, center_crop(degraded, size), center_crop(clean, size)))
    return pairs
