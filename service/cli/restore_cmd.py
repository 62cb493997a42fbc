"""``diffmamba restore IMAGE... --checkpoint PATH``: restore files from the command line.

Diffusion checkpoints run the tiled sampler; single-pass ones (VmambaIR) run whole images up to
``--whole-max-pixels`` (their channel branch pools over the whole image) and tiles above it.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from tqdm import tqdm

from service.cli.common import add_threads_option, fail, int_in_range, resolve_device
from service.diffusion import DEFAULT_STEPS, MAX_STEPS, DDIMSchedule
from service.engines.factory import checked_torch_engine
from service.engines.precision import SETTINGS, autocast
from service.imaging import ImageError, from_tensor, read_image, to_tensor, write_image
from service.models import CheckpointError, load_checkpoint
from service.tiling import fits_whole, restore_tiled, run_single_pass
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
    add_threads_option(p)
    p.add_argument("--precision", choices=SETTINGS, default="auto",
                   help="network pass precision: auto (bf16 on a CPU with native bf16 when it "
                        "stays within 45 dB of fp32, else fp32), fp32, bf16, fp16 (CUDA)")
    p.add_argument("--tile", type=int, default=256,
                   help="tile size for large images (multiple of 8); memory stays bounded")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap (multiple of 8)")
    p.add_argument("--max-batch", type=int, default=1, help="tiles per network pass")
    p.add_argument("--whole-max-pixels", type=int, default=512 * 512,
                   help="single-pass models: run images up to this many pixels whole, tile"
                        " larger ones (default 262144)")
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
    # The same precision decision as the service's engines (hardware, then 45 dB on a tile).
    precision = checked_torch_engine(loaded, device, args.precision, min(args.tile, 64),
                                     Path(args.checkpoint).name).precision
    single_pass = loaded.kind != "diffusion"
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    passes = 1 if single_pass else len(DDIMSchedule().timestep_pairs(args.steps))
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
            cond = to_tensor(image)
            with torch.inference_mode(), autocast(precision, device):
                if single_pass:
                    whole = fits_whole(*cond.shape[-2:], args.whole_max_pixels)
                    out = run_single_pass(loaded.model, cond, tile=None if whole else args.tile,
                                          overlap=args.overlap, max_batch=max(1, args.max_batch),
                                          device=device)
                    bar.update(1)
                else:
                    out = restore_tiled(loaded.model, cond, steps=args.steps, seed=seed,
                                        tile=args.tile, overlap=args.overlap,
                                        max_batch=max(1, args.max_batch), device=device,
                                        on_step=lambda *_: bar.update(1))
            dest = _output_path(src, out_dir, args.format)
            write_image(dest, from_tensor(out.cpu()), image, args.format)
            tqdm.write(f"{src} -> {dest}")
    prefix = "" if single_pass else f"seed {seed}; "
    print(f"{prefix}{len(args.images) - failures} restored, {failures} failed")
    return 1 if failures else 0
