"""Tables of a ``GridResult``: one row per cell, then the task's targets as met / not met.

Each score prints as ``PSNR / SSIM`` (dB with two decimals, SSIM with four), RGB then the
BT.601 Y channel; an infinite PSNR (the identity cell's input) prints as "∞" and is null in
the JSON. Deltas are model minus input PSNR, empty where the input is clean.
"""

from __future__ import annotations

import json
from pathlib import Path

from service.evaluation.grid_runner import CellResult, GridResult
from service.evaluation.metrics import Metrics
from service.evaluation.report import aligned

__all__ = ["grid_rows", "grid_text", "markdown_grid", "target_rows", "write_grid_json",
           "write_grid_markdown"]

INFINITY = "∞"
TARGET_HEADER = ("target", "measured", "status")


def _psnr(value: float) -> str:
    return INFINITY if value == float("inf") else f"{value:.2f}"


def _score(m: Metrics | None, y: bool = False) -> str:
    if m is None:
        return ""
    return f"{_psnr(m.psnr_y)} / {m.ssim_y:.4f}" if y else f"{_psnr(m.psnr)} / {m.ssim:.4f}"


def _delta(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _kinds(result: GridResult) -> list[str]:
    return ["input"] + [k for k, present in (("baseline", result.has_baseline),
                                             ("model", result.has_model)) if present]


def grid_header(result: GridResult) -> list[str]:
    header = ["cell", "params"]
    for kind in _kinds(result):
        header += [f"{kind} PSNR/SSIM", f"{kind} Y"]
    if result.has_model:
        header += ["Δ PSNR", "Δ PSNR-Y", "s/img"]
    return header


def _row(result: GridResult, c: CellResult) -> list[str]:
    row = [c.cell.name, c.cell.describe()]
    for kind in _kinds(result):
        m = c.mean(kind)
        row += [_score(m), _score(m, y=True)]
    if result.has_model:
        seconds = c.result.mean_seconds()
        row += [_delta(c.delta("psnr")), _delta(c.delta("psnr_y")),
                "" if seconds is None else f"{seconds:.2f}"]
    return row


def grid_rows(result: GridResult) -> list[list[str]]:
    """Header, then one row per cell; shared by the text and markdown tables."""
    return [grid_header(result), *(_row(result, c) for c in result.cells)]


def target_rows(result: GridResult) -> list[list[str]]:
    return [list(TARGET_HEADER),
            *([t.target, t.measured, t.status] for t in result.targets())]


def grid_text(result: GridResult) -> str:
    """The cell table and the targets, space-aligned, for the terminal."""
    baseline = f" (baseline: {result.baseline_name})" if result.baseline_name else ""
    return (f"{result.task} robustness grid{baseline}; PSNR dB / SSIM, mean over photos\n"
            + aligned(grid_rows(result)) + "\n\ntargets\n"
            + aligned(target_rows(result), left=3))


def _markdown(rows: list[list[str]], left: int) -> list[str]:
    head, *body = rows
    align = [":---"] * left + ["---:"] * (len(head) - left)
    return ["| " + " | ".join(r) + " |" for r in (head, align, *body)]


def markdown_grid(result: GridResult, title: str | None = None) -> str:
    """The cell table, a legend, and the targets with "not met" in bold."""
    lines = [f"### {title}", ""] if title else []
    lines += _markdown(grid_rows(result), left=2)
    legend = [f"baseline: {result.baseline_name}"] if result.baseline_name else []
    legend += ["PSNR in dB / SSIM, mean over photos; Y: BT.601 luma",
               f"{INFINITY}: identical 8-bit images (the clean input of the identity cell)"]
    if result.has_model:
        legend.append("Δ: model − input PSNR")
    lines += ["", "; ".join(legend) + ".", "", "#### Targets", ""]
    targets = target_rows(result)
    for row in targets[1:]:
        if row[2] == "not met":
            row[2] = "**not met**"
    lines += _markdown(targets, left=2)
    return "\n".join(lines) + "\n"


def write_grid_json(result: GridResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False,
                                     ensure_ascii=False) + "\n")


def write_grid_markdown(result: GridResult, path: str | Path, title: str | None = None) -> None:
    Path(path).write_text(markdown_grid(result, title))
