"""``diffmamba restore IMAGE... --checkpoint PATH | --task T``: restore files from the command line.

Every model kind goes through the same session as the service (service.restoration): diffusion
checkpoints sample over tiles, one-pass ones (VmambaIR, its ×4 SR nets) run whole images up to
``--whole-max-pixels`` and tiles above it.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from tqdm import tqdm

from service.cli.common import add_threads_option, fail, int_in_range, resolve_device
from service.diffusion import DEFAULT_STEPS, MAX_STEPS, DDIMSchedule
from service.engines.factory import checked_torch_engine
from service.engines.precision import SETTINGS
from service.imaging import (
    ImageError,
    from_tensor,
    read_image,
    scaled_like,
    to_tensor,
    write_image,
)
from service.models import CheckpointError, load_checkpoint
from service.restoration import TilingPolicy, open_session, run_session
from service.runtime.discovery import find_task_checkpoint
from service.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore image files with a checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, WebP, TIFF or BMP")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help=".safetensors or BasicSR .pth")
    source.add_argument("--task", help="the shipped model for task T: T.safetensors (or .pth) in "
                                       "the models directory (DIFFMAMBA_MODELS_DIR)")
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


def _checkpoint(args: argparse.Namespace) -> Path:
    if args.checkpoint is not None:
        return Path(args.checkpoint)
    return find_task_checkpoint(Settings().models_dir, args.task).path


def run(args: argparse.Namespace) -> int:
    try:
        policy = TilingPolicy(tile=args.tile, overlap=args.overlap,
                              whole_max_pixels=args.whole_max_pixels)
        device = resolve_device(args.device)
        checkpoint = _checkpoint(args)
        loaded = load_checkpoint(checkpoint, device=device)
    except (ValueError, LookupError, FileNotFoundError, CheckpointError) as exc:
        return fail(str(exc))
    kind = loaded.kind
    # The same precision decision as the service's engines (hardware, then 45 dB on a tile).
    engine = checked_torch_engine(loaded, device, args.precision, min(args.tile, 64),
                                  checkpoint.name)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    passes = len(DDIMSchedule().timestep_pairs(args.steps)) if kind.takes_timestep else 1
    failures = 0
    with tqdm(total=passes * len(args.images), unit="pass", desc="restoring") as bar:
        for name in args.images:
            src = Path(name)
            try:
                image = read_image(src, output_scale=kind.scale)
            except (ImageError, OSError) as exc:
                tqdm.write(f"diffmamba: skipping {src}: {getattr(exc, 'detail', exc)}")
                failures += 1
                bar.update(passes)
                continue
            session = open_session(kind, to_tensor(image), policy, steps=args.steps, seed=seed)
            out = run_session(session, engine.run, max(1, args.max_batch),
                              on_round=lambda *_: bar.update(1))
            dest = _output_path(src, out_dir, args.format)
            write_image(dest, from_tensor(out), scaled_like(image, kind.scale), args.format)
            size = f" ({image.width}x{image.height} -> {out.shape[-1]}x{out.shape[-2]})"
            tqdm.write(f"{src} -> {dest}{size if kind.scale > 1 else ''}")
    prefix = f"seed {seed}; " if kind.takes_timestep else ""
    print(f"{prefix}{len(args.images) - failures} restored, {failures} failed")
    return 1 if failures else 0
