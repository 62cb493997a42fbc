"""What a shipped checkpoint has to reach on the robustness grid, checked cell by cell.

All on RGB PSNR of the per-cell means (``grid_runner.CellResult``); "delta" is model minus
degraded input. Every task:

* **no cell below its input**: in every degraded cell the model's PSNR is at least the
  input's -- a restorer that makes some inputs worse cannot be served for them;
* **identity >= 33 dB**: a clean photo comes back nearly untouched.

Per task:

* **denoise**: delta >= +6 dB on AWGN sigma = 25, and above the non-local-means baseline on
  every AWGN cell with sigma >= 10 (at sigma = 5 NLM and the input are both near-clean);
* **derain**: mean delta >= +3 dB over the derain cells, and above the row-median baseline in
  every one of them;
* **deblur**: mean delta >= +2 dB over the straight-motion cells, and above unsharp masking in
  every deblur cell.

A target that cannot be judged (no model, ``--no-baseline``, or its cells not run) is
``n/a``, never "met".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from service.evaluation.grid import Cell

if TYPE_CHECKING:
    from service.evaluation.grid_runner import CellResult, GridResult

Status = Literal["met", "not met", "n/a"]
Check = Callable[[Sequence["CellResult"]], tuple[Status, str]]
Select = Callable[[Cell], bool]

IDENTITY_MIN_PSNR = 33.0
DENOISE_GAIN_AT_25 = 6.0
DENOISE_BEAT_BASELINE_FROM_SIGMA = 10.0
DERAIN_MEAN_GAIN = 3.0
DEBLUR_MOTION_MEAN_GAIN = 2.0

__all__ = ["TARGETS", "Status", "Target", "TargetResult", "check_targets"]


@dataclass(frozen=True)
class TargetResult:
    target: str
    status: Status
    measured: str

    def to_dict(self) -> dict[str, str]:
        return {"target": self.target, "status": self.status, "measured": self.measured}


@dataclass(frozen=True)
class Target:
    label: str
    check: Check


def _names(names: list[str], shown: int = 4) -> str:
    more = f", … ({len(names)} cells)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _db(value: float) -> str:
    return "∞" if value == float("inf") else f"{value:.2f} dB"


def _degraded(cell: Cell) -> bool:
    return not cell.is_identity


def _family(*families: str) -> Select:
    return lambda cell: cell.family in families


def _pick(cells: Sequence[CellResult], select: Select) -> list[CellResult]:
    return [c for c in cells if select(c.cell)]


def not_below_input(select: Select = _degraded) -> Check:
    def check(cells: Sequence[CellResult]) -> tuple[Status, str]:
        rows = [(c.cell.name, d) for c in _pick(cells, select) if (d := c.delta()) is not None]
        if not rows:
            return "n/a", "no model scores"
        name, worst = min(rows, key=lambda r: r[1])
        below = [n for n, d in rows if d < 0]
        detail = f"; below: {_names(below)}" if below else ""
        return ("not met" if below else "met"), f"worst {name} {worst:+.2f} dB{detail}"

    return check


def min_psnr(minimum: float, select: Select) -> Check:
    def check(cells: Sequence[CellResult]) -> tuple[Status, str]:
        scores = [(c.cell.name, m.psnr) for c in _pick(cells, select)
                  if (m := c.mean("model")) is not None]
        if not scores:
            return "n/a", "no model scores"
        name, worst = min(scores, key=lambda r: r[1])
        return ("met" if worst >= minimum else "not met"), f"{name} {_db(worst)}"

    return check


def mean_gain(minimum: float, select: Select) -> Check:
    def check(cells: Sequence[CellResult]) -> tuple[Status, str]:
        deltas = [(c.cell.name, d) for c in _pick(cells, select) if (d := c.delta()) is not None]
        if not deltas:
            return "n/a", "no model scores"
        gain = float(np.mean([d for _, d in deltas]))
        where = deltas[0][0] if len(deltas) == 1 else f"mean of {len(deltas)} cells"
        return ("met" if gain >= minimum else "not met"), f"{where} {gain:+.2f} dB"

    return check


def above_baseline(select: Select) -> Check:
    def check(cells: Sequence[CellResult]) -> tuple[Status, str]:
        margins = []
        for c in _pick(cells, select):
            model, base = c.mean("model"), c.mean("baseline")
            if model is not None and base is not None:
                margins.append((c.cell.name, model.psnr - base.psnr))
        if not margins:
            return "n/a", "needs model and baseline scores"
        name, worst = min(margins, key=lambda r: r[1])
        behind = [n for n, m in margins if not m > 0]
        detail = f"; not above: {_names(behind)}" if behind else ""
        return ("not met" if behind else "met"), f"smallest margin {name} {worst:+.2f} dB{detail}"

    return check


def _awgn(min_sigma: float, max_sigma: float = float("inf")) -> Select:
    return lambda cell: (cell.family == "gaussian"
                         and min_sigma <= float(cell.params["sigma"]) <= max_sigma)


def _common() -> tuple[Target, ...]:
    return (
        Target("no cell below its input", not_below_input()),
        Target(f"identity ≥ {IDENTITY_MIN_PSNR:g} dB",
               min_psnr(IDENTITY_MIN_PSNR, lambda cell: cell.is_identity)),
    )


TARGETS: dict[str, tuple[Target, ...]] = {
    "denoise": (
        *_common(),
        Target(f"≥ +{DENOISE_GAIN_AT_25:g} dB at σ=25",
               mean_gain(DENOISE_GAIN_AT_25, _awgn(25.0, 25.0))),
        Target(f"above non-local means at every σ ≥ {DENOISE_BEAT_BASELINE_FROM_SIGMA:g}",
               above_baseline(_awgn(DENOISE_BEAT_BASELINE_FROM_SIGMA))),
    ),
    "derain": (
        *_common(),
        Target(f"≥ +{DERAIN_MEAN_GAIN:g} dB mean over the derain cells",
               mean_gain(DERAIN_MEAN_GAIN, _degraded)),
        Target("above the row median in every derain cell", above_baseline(_degraded)),
    ),
    "deblur": (
        *_common(),
        Target(f"≥ +{DEBLUR_MOTION_MEAN_GAIN:g} dB mean over the linear-motion cells",
               mean_gain(DEBLUR_MOTION_MEAN_GAIN, _family("motion"))),
        Target("above unsharp masking in every deblur cell", above_baseline(_degraded)),
    ),
}


def check_targets(grid: GridResult) -> list[TargetResult]:
    """Every target of ``grid.task``, in ``TARGETS`` order."""
    results = []
    for target in TARGETS.get(grid.task, ()):
        status, measured = target.check(grid.cells)
        results.append(TargetResult(target.label, status, measured))
    return results
