"""How textured are the crops a network trains on, next to the photos it is judged on?

Draws random square crops from clean photo folders (a pool's ``train/``) and from the centre
crops the robustness grid scores (scikit-image's photos, ``--eval-size``), and prints the
percentiles of ``service.data.datasets.crop_detail`` for each, with the share of crops below
each ``--floor``: what ``diffmamba train --min-detail`` would redraw.

    python bench/crop_detail.py data/pool/train data/pool2/train --patch 64 --count 2000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from service.data.datasets import crop_detail, list_images, load_rgb
from service.data.evaluation import evaluation_images
from service.evaluation.pairs import center_crop


def sample(images: list[np.ndarray], patch: int, count: int,
           rng: np.random.Generator) -> np.ndarray:
    out = np.empty(count)
    for i in range(count):
        img = images[int(rng.integers(len(images)))]
        top = int(rng.integers(0, img.shape[0] - patch + 1))
        left = int(rng.integers(0, img.shape[1] - patch + 1))
        out[i] = crop_detail(img[top : top + patch, left : left + patch])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", help="folders of clean photos")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--eval-size", type=int, default=256,
                    help="centre crop of the evaluation photos (the grid's --size)")
    ap.add_argument("--floor", type=float, nargs="+", default=[0.01, 0.02])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    sets = {folder: [load_rgb(p) for p in list_images(Path(folder))] for folder in args.folders}
    sets["evaluation photos"] = [center_crop(img, args.eval_size)
                                 for img in evaluation_images().values()]
    for name, images in sets.items():
        detail = sample(images, args.patch, args.count, np.random.default_rng(args.seed))
        print(json.dumps({
            "set": name, "photos": len(images), "patch": args.patch, "crops": args.count,
            "percentiles": dict(zip(("p10", "p25", "p50", "p75", "p90"),
                                    np.percentile(detail, [10, 25, 50, 75, 90]).round(4).tolist(),
                                    strict=True)),
            "below": {str(f): round(float((detail < f).mean()), 3) for f in args.floor},
        }))


if __name__ == "__main__":
    main()
