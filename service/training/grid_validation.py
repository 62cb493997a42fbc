"""Validation on the robustness grid's cells, applied to held-out pool photos: how a run
chooses its checkpoint.

Why not the per-run validation crops alone: those use the training generator at its evaluation
setting, so the weights that score best there are the ones that fit that generator. A served
default must also cope with lighter and heavier degradations, other generators, and clean
photos -- what the robustness grid (``service.evaluation.grid``) measures. Scoring each
validation on the grid's cells, and keeping the weights that score best, chooses the checkpoint
on that instead. The grid's own photos (scikit-image's) stay the untouched test set: the cells
are applied here to the pool's held-out photos.

Each photo is centre-cropped to the validation size plus a margin, degraded by the cell, then
cropped to the validation size, so blur kernels and streaks at the crop's border come from real
content (as the grid's full-size degradation does) at a fraction of the cost.

Score (dB, higher is better), from per-cell mean PSNR over the photos::

    mean gain over the degraded cells
    + the worst degraded cell's gain, when it is negative      (a cell made worse)
    + identity PSNR - 33 dB, when it is negative               (a clean photo damaged)

The two penalties are the grid's two "never worse" targets (``service.evaluation.targets``):
a checkpoint that wins on average by damaging light inputs or clean photos is not chosen.

Super-resolution has no grid; its cells are the two LR generators of ``diffmamba eval --task
sr`` (bicubic and Real-ESRGAN's second order), the gain is over bicubic upscaling of the LR
input and PSNR is taken on the luma (Y) channel, as SR is scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from service.evaluation.grid import GRID, cell_rng, cells_for
from service.evaluation.pairs import center_crop
from service.evaluation.targets import IDENTITY_MIN_PSNR
from service.training.metrics import psnr

__all__ = [
    "MARGIN",
    "CellScore",
    "GridScore",
    "GridValidationSet",
    "best_improved",
    "describe",
    "grid_validation_set",
    "score_grid",
    "sr_validation_set",
]

MARGIN = 64
"""Pixels of context kept around the crop while degrading (longest grid kernel/streak: 35)."""
MIN_SIZE = 16


@dataclass(frozen=True)
class GridValidationSet:
    """Per cell a (N, 3, S, S) degraded batch of the same N clean crops."""

    task: str
    names: tuple[str, ...]
    identity: tuple[bool, ...]
    degraded: tuple[torch.Tensor, ...]
    clean: torch.Tensor
    photos: tuple[str, ...]
    # what each cell's gain is measured from; None: the degraded input itself (same size)
    baseline: tuple[torch.Tensor, ...] | None = None
    luma: bool = False  # PSNR on BT.601 Y instead of RGB


@dataclass(frozen=True)
class CellScore:
    name: str
    identity: bool
    input_psnr: float
    model_psnr: float

    @property
    def gain(self) -> float:
        return self.model_psnr - self.input_psnr


@dataclass(frozen=True)
class GridScore:
    cells: tuple[CellScore, ...]

    @property
    def identity_psnr(self) -> float | None:
        found = [c.model_psnr for c in self.cells if c.identity]
        return found[0] if found else None

    @property
    def gains(self) -> list[float]:
        return [c.gain for c in self.cells if not c.identity]

    @property
    def mean_gain(self) -> float:
        gains = self.gains
        return float(np.mean(gains)) if gains else 0.0

    @property
    def worst_gain(self) -> float:
        gains = self.gains
        return min(gains) if gains else 0.0

    @property
    def score(self) -> float:
        identity = self.identity_psnr
        identity_penalty = 0.0 if identity is None else min(0.0, identity - IDENTITY_MIN_PSNR)
        return self.mean_gain + min(0.0, self.worst_gain) + identity_penalty

    def summary(self) -> dict[str, float]:
        """Flat floats for the run's log and saved state."""
        out = {"grid_score": self.score, "grid_mean_gain": self.mean_gain,
               "grid_worst_gain": self.worst_gain}
        if self.identity_psnr is not None:
            out["grid_identity_psnr"] = self.identity_psnr
        return out

    def per_cell(self) -> dict[str, float]:
        """Cell name -> gain (dB); the identity cell's value is its PSNR."""
        return {c.name: round(c.model_psnr if c.identity else c.gain, 3) for c in self.cells}


def _photos(val_dir: Path, count: int) -> dict[str, np.ndarray]:
    from service.data.datasets import list_images, load_rgb
    from service.data.evaluation import to_float_rgb

    return {p.stem: to_float_rgb(load_rgb(p)) for p in list_images(val_dir)[:count]}


def grid_validation_set(task: str, val_dir: str | Path, count: int, size: int,
                        seed: int = 0, multiple: int = 8) -> GridValidationSet | None:
    """The fixed grid validation set, or None where there is none to build: a task without a
    grid, ``count`` 0, or photos too small for a ``MIN_SIZE`` crop.

    The crop side is ``size``, or less when a photo is smaller, rounded down to ``multiple``
    (the network's pad multiple), so every crop stacks into one batch.
    """
    if task not in GRID or count < 1:
        return None
    photos = _photos(Path(val_dir), count)
    if not photos:
        return None
    side = min(size, *(min(im.shape[:2]) for im in photos.values()))
    side -= side % multiple
    if side < MIN_SIZE:
        return None
    cells = cells_for(task)
    names = list(photos)
    windows = [center_crop(im, side + 2 * MARGIN) for im in photos.values()]
    clean = torch.stack([_tensor(center_crop(w, side)) for w in windows])
    degraded = []
    for c, cell in enumerate(cells):
        crops = [center_crop(cell.apply(w, cell_rng(seed, c, i)), side)
                 for i, w in enumerate(windows)]
        degraded.append(torch.stack([_tensor(x) for x in crops]))
    return GridValidationSet(task, tuple(c.name for c in cells),
                             tuple(c.is_identity for c in cells), tuple(degraded), clean,
                             tuple(names))


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def score_grid(vset: GridValidationSet,
               restore_batch: Callable[[torch.Tensor], torch.Tensor],
               batch: int = 4) -> GridScore:
    """Restore every cell with ``restore_batch`` ((B, 3, S, S) -> same, in [0, 1]) and score.

    Outputs are rounded to 8 bits first, as a served image is.
    """
    cells: list[CellScore] = []
    step = max(1, batch)
    baselines = vset.baseline if vset.baseline is not None else vset.degraded
    for name, identity, degraded, base in zip(vset.names, vset.identity, vset.degraded,
                                              baselines, strict=True):
        outs = [restore_batch(degraded[s:s + step]) for s in range(0, len(degraded), step)]
        out = (torch.cat(outs).clamp(0, 1) * 255).round() / 255
        cells.append(CellScore(name, identity, _mean_psnr(base, vset.clean, vset.luma),
                               _mean_psnr(out, vset.clean, vset.luma)))
    return GridScore(tuple(cells))


def _mean_psnr(x: torch.Tensor, y: torch.Tensor, luma: bool = False) -> float:
    if luma:
        x, y = _luma(x), _luma(y)
    return float(psnr(x, y).mean())


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) Y in [0, 1] units, as ``evaluation.metrics.rgb_to_y``
    (which is on the 0..255 scale)."""
    from service.evaluation.metrics import Y_OFFSET, Y_WEIGHTS

    weights = torch.tensor(Y_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x * weights).sum(1, keepdim=True) + Y_OFFSET) / 255.0


def sr_validation_set(val_dir: str | Path, count: int, size: int, seed: int = 0,
                      scale: int = 4, multiple: int = 8) -> GridValidationSet | None:
    """LR/HR crops of ``count`` held-out photos for each LR generator, the HR side ``size`` or
    less, rounded down so the LR side is a multiple of ``multiple``; None as
    ``grid_validation_set``."""
    from service.evaluation.sr_pairs import SR_DEGRADATIONS, sr_pairs
    from service.evaluation.upscale import bicubic_up

    if count < 1:
        return None
    photos = _photos(Path(val_dir), count)
    if not photos:
        return None
    side = min(size, *(min(im.shape[:2]) for im in photos.values()))
    side -= side % (multiple * scale)
    if side < MIN_SIZE * scale:
        return None
    inputs, baselines, clean = [], [], None
    for name in SR_DEGRADATIONS:
        pairs = sr_pairs(name, seed, size=side, images=photos, scale=scale)
        inputs.append(torch.stack([_tensor(p.degraded) for p in pairs]))
        baselines.append(torch.stack([_tensor(bicubic_up(p.degraded, scale)) for p in pairs]))
        clean = torch.stack([_tensor(p.clean) for p in pairs])
    assert clean is not None
    return GridValidationSet("sr", tuple(SR_DEGRADATIONS), (False,) * len(SR_DEGRADATIONS),
                             tuple(inputs), clean, tuple(photos), tuple(baselines), luma=True)


def best_improved(previous: float | None, score: float) -> bool:
    """A strictly higher score replaces the kept checkpoint (ties keep the earlier one)."""
    return previous is None or score > previous


def describe(score: GridScore) -> str:
    """One line for the console: score, identity and the worst cell."""
    worst = min((c for c in score.cells if not c.identity), key=lambda c: c.gain, default=None)
    parts = [f"grid score {score.score:+.2f} dB", f"mean gain {score.mean_gain:+.2f}"]
    if score.identity_psnr is not None:
        parts.append(f"identity {score.identity_psnr:.2f}")
    if worst is not None:
        parts.append(f"worst {worst.name} {worst.gain:+.2f}")
    return ", ".join(parts)
