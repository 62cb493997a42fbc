"""``diffmamba restore IMAGE... --checkpoint PATH``: restore files from the command line."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from tqdm import tqdm

from service.cli.common import fail, int_in_range, resolve_device
from service.diffusion import DEFAULT_STEPS, MAX_STEPS, DDIMSchedule
from service.imaging import ImageError, from_tensor, read_image, to_tensor, write_image
from service.models import CheckpointError, load_checkpoint
from service.tiling import restore_tiled
from service.tiling.grid import validate_tiling


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore image files with a checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, WebP, TIFF or BMP")
    p.add_argument("--checkpoint", required=True, help=".safetensors or BasicSR .pth")
    p.add_argument("--steps", type=int_in_range(1, MAX_STEPS), default=DEFAULT_STEPS,
                   help="sampling steps (1-50)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (random when absent)")
    p.add_argument("--output", default="restored", help="output directory")
    p.add_argument("--format", choices=["png", "jpeg", "webp", "tiff"], default=None,
                   help="output format (default: the input's, PNG for others)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tile", type=int, default=256,
                   help="tile size for large images (multiple of 8); memory stays bounded")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap (multiple of 8)")
    p.add_argument("--max-batch", type=int, default=1, help="tiles per network pass")
    p.set_defaults(run=run)


def _output_path(src: Path, out_dir: Path, fmt: str | None) -> Path:
    suffix = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif"}.get(fmt or "")
    if suffix is None:
        suffix = src.suffix.lower() if src.suffix.lower() in {
            ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"} else ".png"
    return out_dir / f"{src.stem}{suffix}"


def run(args: argparse.Namespace) -> int:
    try:
        validate_tiling(args.tile, args.overlap)
        device = resolve_device(args.device)
        loaded = load_checkpoint(args.checkpoint, device=device)
    except (ValueError, CheckpointError) as exc:
        return fail(str(exc))
    if loaded.kind != "diffusion":
        return fail(f"{loaded.arch} checkpoints are single-pass; not supported by this command yet")
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    passes = len(DDIMSchedule().timestep_pairs(args.steps))
    failures = 0
    with tqdm(total=passes * len(args.images), unit="pass", desc="restoring") as bar:
        for name in args.images:
            src = Path(name)
            try:
                image = read_image(src)
            except (ImageError, OSError) as exc:
                tqdm.write(f"diffmamba: skipping {src}: {getattr(exc, 'detail', exc)}")
                failures += 1
                bar.update(passes)
                continue
            with torch.inference_mode():
                out = restore_tiled(loaded.model, to_tensor(image), steps=args.steps, seed=seed,
                                    tile=args.tile, overlap=args.overlap,
                                    max_batch=max(1, args.max_batch), device=device,
                                    on_step=lambda *_: bar.update(1))
            dest = _output_path(src, out_dir, args.format)
            write_image(dest, from_tensor(out.cpu()), image, args.format)
            tqdm.write(f"{src} -> {dest}")
    print(f"seed {seed}; {len(args.images) - failures} restored, {failures} failed")
    return 1 if failures else 0
