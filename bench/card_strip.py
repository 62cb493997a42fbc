"""Before / after / clean strips for a model card: what a user sees, not only a number.

For each of a few scikit-image photos (never trained on) a grid cell degrades a centre crop, the
checkpoint restores it through the library call every front-end shares
(``service.diffusion.restore``), and one row ``degraded | restored | clean`` goes into a PNG,
each panel labelled with its PSNR against the clean crop.

    python bench/card_strip.py --task derain --checkpoint models/derain-vmambair.safetensors \\
        --cell screen-light --output models/derain-vmambair.png
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

    cells = {c.name: (i, c) for i, c in enumerate(cells_for(args.task))}
    if args.cell not in cells:
        raise SystemExit(f"unknown cell {args.cell!r} for {args.task}; cells: {', '.join(cells)}")
    index, cell = cells[args.cell]
    model = load_model(args.checkpoint, device="cpu")
    photos = evaluation_images(tuple(args.photos))
    rows = []
    for name, image in photos.items():
        clean = centre(image, args.size)
        # the grid's seeding: (seed, cell, the photo's index in the evaluation set)
        degraded = cell.apply(clean, cell_rng(args.seed, index, EVALUATION_NAMES.index(name)))
        x = torch.from_numpy(degraded.transpose(2, 0, 1).copy())[None]
        with torch.inference_mode():
            out = restore(model, x, steps=args.steps, seed=args.seed)
        restored = np.round(out[0].clamp(0, 1).numpy().transpose(1, 2, 0) * 255) / 255
        panels = [panel(degraded, f"{name} {args.cell} {psnr(degraded, clean):.2f} dB"),
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
