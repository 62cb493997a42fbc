"""Run the robustness grid: ``evaluate`` once per cell, then per-cell means and targets.

Each cell goes through ``runner.evaluate`` with the caller's restorer, so the grid scores a
model exactly as ``diffmamba eval`` does (same restorer, same metrics, same timing). What the
grid adds is the bookkeeping around it: per-cell means in which an infinite PSNR stays
infinite (the identity cell's input; ``Metrics.mean`` would average the capped 100 dB), the
model - input deltas, and the task targets (``targets``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from service.evaluation.grid import Cell, cells_for, grid_pairs
from service.evaluation.metrics import MAX_PSNR, Metrics
from service.evaluation.runner import EvalResult, ImageResult, Restorer, evaluate

__all__ = ["CellResult", "GridResult", "json_metrics", "run_grid", "uncapped"]

KINDS = ("input", "baseline", "model")


def uncapped(m: Metrics) -> Metrics:
    """``m`` with a capped PSNR (identical 8-bit images) turned back into infinity."""
    return replace(
        m,
        psnr=float("inf") if m.psnr >= MAX_PSNR else m.psnr,
        psnr_y=float("inf") if m.psnr_y >= MAX_PSNR else m.psnr_y,
    )


def json_metrics(m: Metrics | None) -> dict[str, float | None] | None:
    """JSON-ready metrics: an infinite PSNR becomes null (JSON has no infinity)."""
    if m is None:
        return None
    return {k: (v if np.isfinite(v) else None) for k, v in m.to_dict().items()}


@dataclass
class CellResult:
    """One cell's ``EvalResult`` with the grid's view of it."""

    index: int
    cell: Cell
    result: EvalResult

    def mean(self, kind: str) -> Metrics | None:
        """Mean over photos; one infinite PSNR makes the mean infinite, as it should."""
        values = [uncapped(m) for r in self.result.images if (m := r.row(kind)) is not None]
        if not values:
            return None
        names = ("psnr", "ssim", "psnr_y", "ssim_y")
        return Metrics(*(float(np.mean([getattr(m, n) for m in values])) for n in names))

    def delta(self, channel: str = "psnr") -> float | None:
        """Model minus input PSNR (``psnr`` or ``psnr_y``); None without a model or a finite
        input (identity)."""
        model, inp = self.mean("model"), self.mean("input")
        if model is None or inp is None:
            return None
        a, b = getattr(model, channel), getattr(inp, channel)
        return float(a - b) if np.isfinite(b) else None

    def to_dict(self, seed: int) -> dict[str, Any]:
        def image(i: int, r: ImageResult) -> dict[str, Any]:
            rows = {k: json_metrics(uncapped(m)) for k in KINDS if (m := r.row(k)) is not None}
            return {"name": r.name, "rng": [seed, self.index, i], "height": r.height,
                    "width": r.width, **rows, "model_seconds": r.model_seconds}

        means = {k: json_metrics(m) for k in KINDS if (m := self.mean(k)) is not None}
        return {
            "index": self.index,
            "name": self.cell.name,
            "family": self.cell.family,
            "params": dict(self.cell.params),
            "mean": {**means, "model_seconds": self.result.mean_seconds()},
            "delta": {"psnr": self.delta("psnr"), "psnr_y": self.delta("psnr_y")},
            "images": [image(i, r) for i, r in enumerate(self.result.images)],
        }


@dataclass
class GridResult:
    """Every cell of one task's grid; ``info`` (source, model) goes into the JSON."""

    task: str
    seed: int
    cells: list[CellResult]
    baseline_name: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def has_model(self) -> bool:
        return any(c.mean("model") is not None for c in self.cells)

    @property
    def has_baseline(self) -> bool:
        return any(c.mean("baseline") is not None for c in self.cells)

    def targets(self) -> list[Any]:
        from service.evaluation.targets import check_targets

        return check_targets(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "kind": "grid",
            "seed": self.seed,
            "baseline": self.baseline_name,
            "psnr_null_means": "infinite (identical 8-bit images)",
            **self.info,
            "cells": [c.to_dict(self.seed) for c in self.cells],
            "targets": [t.to_dict() for t in self.targets()],
        }


def run_grid(
    task: str,
    restore_fn: Restorer | None,
    *,
    seed: int = 0,
    size: int | None = None,
    limit: int | None = None,
    baseline: bool = True,
    crop_border: int = 0,
    images: Mapping[str, np.ndarray] | None = None,
    cells: Sequence[int] | None = None,
    on_image: Callable[[Cell, ImageResult], None] | None = None,
) -> GridResult:
    """Evaluate input, baseline and ``restore_fn`` on every cell (or the ``cells`` indices).

    ``images`` defaults to the scikit-image evaluation photos, loaded once for all cells.
    """
    from service.data.evaluation import evaluation_images

    all_cells = cells_for(task)
    chosen = range(len(all_cells)) if cells is None else cells
    if images is None:
        images = evaluation_images()
    results: list[CellResult] = []
    baseline_name = None
    for index in chosen:
        cell = all_cells[index]
        pairs = grid_pairs(task, index, seed=seed, size=size, limit=limit, images=images)

        def report(r: ImageResult, cell: Cell = cell) -> None:
            if on_image is not None:
                on_image(cell, r)

        result = evaluate(task, restore_fn, pairs, baseline=baseline,
                          crop_border=crop_border, on_image=report)
        baseline_name = result.baseline_name
        results.append(CellResult(index, cell, result))
    return GridResult(task, seed, results, baseline_name)
