"""Before / after / clean strips for a model card: what a user sees, not only a number.

For each of a few scikit-image photos (never trained on) a grid cell degrades a centre crop, the
checkpoint restores it through the library call every front-end shares
(``service.diffusion.restore``), and one row ``degraded | restored | clean`` goes into a PNG,
each panel labelled with its PSNR against the clean crop. For ``--task sr`` the cell is the LR
generator (``bicubic`` or ``second-order``, seeded as ``diffmamba eval --task sr`` seeds them) and
the rows are ``bicubic ×4 | restored ×4 | clean``.

    python bench/card_strip.py --task derain --checkpoint models/derain.safetensors \\
        --cell screen-light --output models/derain.png
    python bench/card_strip.py --task sr --checkpoint models/sr.safetensors \\
        --cell second-order --size 128 --output models/sr.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from service.data.evaluation import EVALUATION_NAMES, evaluation_images
from service.diffusion import restore
from service.evaluation.grid import cell_rng, cells_for
from service.models import load_model

DEFAULT_PHOTOS = ("astronaut", "coffee", "chelsea")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def centre(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def panel(image: np.ndarray, label: str) -> Image.Image:
    im = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, 8 * len(label) + 6, 14), fill=(0, 0, 0))
    draw.text((3, 2), label, fill=(255, 255, 255))
    return im


def degraded_pairs(task: str, cell_name: str, names: list[str], size: int,
                   seed: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(photo, model input, the input as shown, clean) for each photo, seeded as the evaluation
    seeds them, so a strip shows rows of the card's table."""
    if task == "sr":
        from service.evaluation.sr_pairs import SR_DEGRADATIONS, sr_pairs
        from service.evaluation.upscale import bicubic_up

        if cell_name not in SR_DEGRADATIONS:
            raise SystemExit(f"unknown LR generator {cell_name!r}; expected one of "
                             f"{', '.join(SR_DEGRADATIONS)}")
        pairs = {p.name: p for p in sr_pairs(cell_name, seed=seed, size=size)}
        return [(n, pairs[n].degraded, bicubic_up(pairs[n].degraded, pairs[n].scale),
                 pairs[n].clean) for n in names]
    cells = {c.name: (i, c) for i, c in enumerate(cells_for(task))}
    if cell_name not in cells:
        raise SystemExit(f"unknown cell {cell_name!r} for {task}; cells: {', '.join(cells)}")
    index, cell = cells[cell_name]
    rows = []
    for name, image in evaluation_images(tuple(names)).items():
        clean = centre(image, size)
        # the grid's seeding: (seed, cell, the photo's index in the evaluation set)
        degraded = cell.apply(clean, cell_rng(seed, index, EVALUATION_NAMES.index(name)))
        rows.append((name, degraded, degraded, clean))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--cell", required=True, help="a grid cell of the task (diffmamba eval --grid)")
    p.add_argument("--photos", nargs="+", default=list(DEFAULT_PHOTOS))
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()

    model = load_model(args.checkpoint, device="cpu")
    rows = []
    for name, model_input, shown, clean in degraded_pairs(args.task, args.cell, args.photos,
                                                          args.size, args.seed):
        x = torch.from_numpy(model_input.transpose(2, 0, 1).copy())[None]
        with torch.inference_mode():
            out = restore(model, x, steps=args.steps, seed=args.seed)
        restored = np.round(out[0].clamp(0, 1).numpy().transpose(1, 2, 0) * 255) / 255
        panels = [panel(shown, f"{name} {args.cell} {psnr(shown, clean):.2f} dB"),
                  panel(restored, f"restored {psnr(restored, clean):.2f} dB"),
                  panel(clean, "clean")]
        row = Image.new("RGB", (sum(q.width for q in panels), panels[0].height))
        x0 = 0
        for q in panels:
            row.paste(q, (x0, 0))
            x0 += q.width
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output, optimize=True)
    print(f"wrote {args.output} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
