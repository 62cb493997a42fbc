"""Can a deblurring network learn to undo ONE known blur? A sanity probe for the blind training.

The blind deblurring runs stay near the identity (``models/deblur.md``). This probe removes the
blindness: every training crop is blurred by the same kernel (straight-line motion of ``--length``
px at ``--angle`` degrees, the grid's ``motion-L@A`` cell), and the PSNR gain over the blurred
input is reported on held-out crops blurred the same way. If the network cannot gain here either,
capacity or optimisation is the problem, not the kernel mix.

    python bench/deblur_probe.py --checkpoint models/deblur.safetensors --clean data/pool2 \
        --iters 300 --lr 3e-4 --min-detail 0.02

Prints one JSON line per evaluation (iteration, input and output PSNR, gain).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from service.data.datasets import detailed_crop, list_images, load_rgb
from service.data.degrade import convolve
from service.data.degrade.eval_blur import line_kernel
from service.models import load_checkpoint
from service.training.losses import psnr_loss


def _crops(images: list[np.ndarray], patch: int, count: int, rng: np.random.Generator,
           min_detail: float = 0.0) -> np.ndarray:
    def draw() -> np.ndarray:
        img = images[int(rng.integers(len(images)))]
        top = int(rng.integers(0, img.shape[0] - patch + 1))
        left = int(rng.integers(0, img.shape[1] - patch + 1))
        return img[top:top + patch, left:left + patch]

    return np.stack([detailed_crop(draw, min_detail).astype(np.float32) / 255.0
                     for _ in range(count)])


def _pairs(crops: np.ndarray, kernel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    blurred = np.stack([np.round(convolve(c, kernel) * 255) / 255 for c in crops]).clip(0, 1)
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()  # noqa: E731
    return to(blurred), to(crops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--clean", required=True, help="a pool (DIR/train, DIR/val)")
    ap.add_argument("--length", type=int, default=11)
    ap.add_argument("--angle", type=float, default=30.0)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-detail", type=float, default=0.0,
                    help="redraw crops flatter than this, training and held-out alike "
                         "(as diffmamba train --min-detail)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    kernel = line_kernel(args.length, args.angle)
    model = load_checkpoint(args.checkpoint).model.train().requires_grad_(True)
    train_images = [load_rgb(p) for p in list_images(Path(args.clean) / "train")]
    val_images = [load_rgb(p) for p in list_images(Path(args.clean) / "val")]
    val_in, val_clean = _pairs(_crops(val_images, 128, 8, rng, args.min_detail), kernel)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)

    def evaluate(step: int) -> None:
        model.eval()
        with torch.inference_mode():
            out = model(val_in).clamp(0, 1)
        model.train()
        before = -float(psnr_loss(val_in, val_clean))
        after = -float(psnr_loss(out, val_clean))
        print(json.dumps({"step": step, "input_psnr": round(before, 3),
                          "output_psnr": round(after, 3), "gain": round(after - before, 3),
                          "time": round(time.monotonic() - start, 1)}), flush=True)

    start = time.monotonic()
    evaluate(0)
    for step in range(1, args.iters + 1):
        blurred, clean = _pairs(
            _crops(train_images, args.patch, args.batch, rng, args.min_detail), kernel)
        loss = psnr_loss(model(blurred), clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.eval_every == 0:
            evaluate(step)


if __name__ == "__main__":
    main()
