"""Tables of an ``EvalResult``: aligned text for the terminal, markdown for model cards.

One row per (image, method) -- input, baseline, model -- then the means. PSNR in dB with two
decimals and SSIM with four, as the papers print them; a capped PSNR (identical images)
prints as ``>=100``.
"""

from __future__ import annotations

import json
from pathlib import Path

from service.evaluation.metrics import MAX_PSNR, Metrics
from service.evaluation.runner import EvalResult

HEADER = ("image", "method", "PSNR", "SSIM", "PSNR-Y", "SSIM-Y", "s/img")
MEAN_LABEL = "mean"


def _psnr(value: float) -> str:
    return f">={MAX_PSNR:.0f}" if value >= MAX_PSNR else f"{value:.2f}"


def _cells(m: Metrics) -> list[str]:
    return [_psnr(m.psnr), f"{m.ssim:.4f}", _psnr(m.psnr_y), f"{m.ssim_y:.4f}"]


def _label(result: EvalResult, kind: str) -> str:
    if kind == "baseline" and result.baseline_name:
        return f"baseline ({result.baseline_name})"
    if kind == "input" and result.input_name:
        return f"input ({result.input_name})"
    return kind


def table_rows(result: EvalResult) -> list[list[str]]:
    """The table body as strings (per image, then the mean), shared by both formats."""
    rows: list[list[str]] = []
    groups = [(r.name, r.row, r.model_seconds) for r in result.images]
    groups.append((MEAN_LABEL, result.mean, result.mean_seconds()))
    for name, get, seconds in groups:
        for kind in result.rows():
            metrics = get(kind)
            if metrics is None:
                continue
            timing = f"{seconds:.2f}" if kind == "model" and seconds is not None else ""
            rows.append([name, _label(result, kind), *_cells(metrics), timing])
    return rows


def aligned(rows: list[list[str]], left: int = 2) -> str:
    """Space-aligned columns: the first ``left`` left-aligned (labels), the rest right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if i < left else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def text_table(result: EvalResult) -> str:
    """Space-aligned columns, numbers right-aligned."""
    return aligned([list(HEADER), *table_rows(result)])


def markdown_table(result: EvalResult) -> str:
    """A GitHub-flavoured markdown table, the mean rows in bold."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join([":---", ":---"] + ["---:"] * (len(HEADER) - 2)) + "|",
    ]
    for row in table_rows(result):
        if row[0] == MEAN_LABEL:
            row = [f"**{c}**" if c else c for c in row]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_json(result: EvalResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")


def write_markdown(result: EvalResult, path: str | Path, title: str | None = None) -> None:
    heading = f"### {title}\n\n" if title else ""
    Path(path).write_text(heading + markdown_table(result))
