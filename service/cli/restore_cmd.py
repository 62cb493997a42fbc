"""``diffmamba restore INPUT... --task T | --checkpoint PATH [--server URL]``: restore files.

Inputs are files, folders (searched recursively) and glob patterns (``service.cli.inputs``);
each result is ``--output/<sub-folder>/<name><suffix>.<ext>`` (``service.cli.destinations``),
checked before any work starts: a run never overwrites an input, never writes two images to
one file, and replaces existing results only with ``--overwrite``.

Locally every model kind goes through the same session as the service (service.restoration):
diffusion checkpoints sample over tiles, one-pass ones (VmambaIR, its ×4 SR nets) run whole
images up to ``--whole-max-pixels`` and tiles above it. With ``--server`` the service does the
work and this process only reads and writes files.

This module is imported to declare the parser (``diffmamba restore --help``), so torch and the
model code are imported inside ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.common import (
    add_threads_option,
    fail,
    lazy_choice,
    non_negative_int,
    positive_int,
)
from service.cli.destinations import SERVER_FORMATS

if TYPE_CHECKING:
    from service.cli.destinations import Job
    from service.cli.restorers import Restorer

FORMATS = ("png", "jpeg", "webp", "tiff")
API_KEY_ENV = "DIFFMAMBA_API_KEY"
# Options that only mean something when the model runs in this process: dest -> flag.
LOCAL_ONLY = {"checkpoint": "--checkpoint", "models": "--models", "device": "--device",
              "threads": "--threads", "precision": "--precision", "overlap": "--overlap",
              "max_batch": "--max-batch", "whole_max_pixels": "--whole-max-pixels"}
# Local options left out take the service's settings (DIFFMAMBA_*): option -> Settings field.
FROM_SETTINGS = {"device": "device", "precision": "precision", "tile": "tile_size",
                 "overlap": "tile_overlap", "whole_max_pixels": "whole_image_max_pixels"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore",
        help="restore image files, folders or globs with a shipped model or a checkpoint",
        description="Restore images with the shipped model for a task (--task), a checkpoint "
                    "file (--checkpoint), or a running service (--server URL --task T). Each "
                    "result is written to --output as <name><suffix>.<ext>; a folder input "
                    "keeps its sub-folders.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (PNG, JPEG, WebP, TIFF, BMP), folders (searched "
                        "recursively for image files; hidden entries skipped) or glob patterns "
                        "such as 'photos/**/*.jpg'")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", metavar="T",
                        help="the shipped model for task T: T.safetensors (or .pth) in the "
                             "models directory (--models, DIFFMAMBA_MODELS_DIR); with --server, "
                             "the task the service serves")
    source.add_argument("--checkpoint", metavar="PATH", help=".safetensors or BasicSR .pth")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampling steps, 1-50 (default: the task's, from its model card, else "
                        "DIFFMAMBA_DEFAULT_STEPS or 4; one-pass models ignore it)")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="noise seed (random when absent, and printed)")

    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", default="restored", metavar="DIR",
                     help="output folder (default: restored)")
    out.add_argument("--suffix", default=None,
                     help="added to each file name (default: _<task>, the checkpoint's file name "
                          "without extension for --checkpoint); '' keeps the names")
    out.add_argument("--format", choices=FORMATS, default=None,
                     help="output format (default: the input's; PNG for BMP)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace existing output files (inputs are never overwritten)")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="no progress bars and no per-image lines (bars are only drawn when "
                          "stderr is a terminal)")

    local = p.add_argument_group("running the model here")
    local.add_argument("--models", metavar="DIR", default=None,
                       help="models directory for --task (default: DIFFMAMBA_MODELS_DIR, else "
                            "the repository's models/)")
    local.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    add_threads_option(local)
    local.add_argument("--precision", type=lazy_choice("service.engines.precision", "SETTINGS"),
                       metavar="PRECISION", default=None,
                       help="network pass precision: auto (the default: bf16 on a CPU with "
                            "native bf16 when it stays within 45 dB of fp32, else fp32), fp32, "
                            "bf16, fp16 (CUDA)")
    local.add_argument("--tile", type=positive_int, default=None,
                       help="tile size for large images (multiple of 8, default 256); memory "
                            "stays bounded. With --server: the tile-size override sent")
    local.add_argument("--overlap", type=int, default=None,
                       help="tile overlap (multiple of 8, default 32)")
    local.add_argument("--max-batch", type=positive_int, default=None,
                       help="tiles per network pass (default 1)")
    local.add_argument("--whole-max-pixels", type=positive_int, default=None,
                       help="single-pass models: run images up to this many pixels whole, tile"
                            " larger ones (default 262144)")

    remote = p.add_argument_group("sending the work to a running service")
    remote.add_argument("--server", metavar="URL", default=None,
                        help="base URL of a diffmamba service, e.g. http://127.0.0.1:8000; "
                             "needs --task")
    remote.add_argument("--api-key", default=None,
                        help=f"API key for the service (default: {API_KEY_ENV})")
    p.set_defaults(run=run)


def _check_mode(args: argparse.Namespace) -> str | None:
    """The first option that does not fit local or remote restoration, or None."""
    if args.server is None:
        if args.api_key is not None:
            return "--api-key applies to --server only"
        return None
    if args.task is None:
        return "--server needs --task (the service's task name), not --checkpoint"
    given = [flag for dest, flag in LOCAL_ONLY.items() if getattr(args, dest) is not None]
    if given:
        return f"{', '.join(given)}: only for restoring here, not with --server"
    if args.format is not None and args.format not in SERVER_FORMATS:
        return (f"--format {args.format} is not available from the service "
                f"(choose {', '.join(SERVER_FORMATS)})")
    return None


def _suffix(args: argparse.Namespace) -> str:
    if args.suffix is not None:
        return args.suffix
    label = args.task if args.task is not None else Path(args.checkpoint).stem
    return f"_{label}"


def _human_bytes(n: int) -> str:
    for unit, size in (("MB", 1_000_000), ("kB", 1_000)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def run(args: argparse.Namespace) -> int:
    from service.cli.destinations import DestinationError, plan_jobs
    from service.cli.inputs import InputError, expand_inputs

    problem = _check_mode(args)
    if problem:
        return fail(problem)
    if args.suffix is not None and (os.sep in args.suffix or "/" in args.suffix):
        return fail(f"--suffix must not contain a path separator, got {args.suffix!r}")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        return fail(f"--output {out_dir} exists and is not a folder")
    try:
        images = expand_inputs(args.inputs, out_dir)
        jobs = plan_jobs(images, out_dir, _suffix(args), args.format, overwrite=args.overwrite)
    except (InputError, DestinationError) as exc:
        return fail(str(exc))

    seed = args.seed if args.seed is not None else random.randrange(2**31)
    try:
        restorer = (_remote(args, seed) if args.server is not None else _local(args, seed))
    except _SetupError as exc:
        return fail(str(exc))
    return _restore_all(jobs, restorer, args, seed)


class _SetupError(Exception):
    """The model or service could not be prepared; reported as a usage error."""


def _local(args: argparse.Namespace, seed: int) -> Restorer:
    from service.cli.restorers import LocalOptions, LocalRestorer
    from service.diffusion import MAX_STEPS
    from service.models import CheckpointError
    from service.runtime.discovery import CHECKPOINT_SUFFIXES, find_task_checkpoint
    from service.settings import Settings

    if args.steps is not None and args.steps > MAX_STEPS:
        raise _SetupError(f"--steps must be 1..{MAX_STEPS}, got {args.steps}")
    try:
        settings = Settings(**({"models_dir": Path(args.models)} if args.models else {}))
        given = {k: getattr(args, k) for k in FROM_SETTINGS if getattr(args, k) is not None}
        options = LocalOptions(**{k: getattr(settings, field) for k, field in
                                  FROM_SETTINGS.items()} | given,
                               max_batch=args.max_batch or 1)
        if args.task is not None:
            entry = find_task_checkpoint(settings.models_dir, args.task)
            checkpoint, card = entry.path, entry.card
        else:
            checkpoint, card = Path(args.checkpoint), {}
            if not checkpoint.is_file():
                siblings = [checkpoint.with_suffix(s) for s in CHECKPOINT_SUFFIXES]
                near = [str(s) for s in siblings if s.is_file()]
                hint = f" (there is {' and '.join(near)})" if near else ""
                raise _SetupError(f"checkpoint not found: {checkpoint}{hint}")
        steps = args.steps or int(card.get("default_steps", settings.default_steps))
        return LocalRestorer(checkpoint, options, steps=steps, seed=seed)
    except FileNotFoundError as exc:
        hint = " (pass --models DIR or set DIFFMAMBA_MODELS_DIR)" if args.task else ""
        raise _SetupError(f"{exc}{hint}") from exc
    except (ValueError, LookupError, CheckpointError) as exc:
        raise _SetupError(str(exc)) from exc


def _remote(args: argparse.Namespace, seed: int) -> Restorer:
    from service.cli.restorers import RemoteRestorer
    from service.client import ServiceError

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    try:
        return RemoteRestorer(args.server, args.task, api_key=api_key, steps=args.steps,
                              seed=seed, tile=args.tile)
    except ServiceError as exc:
        raise _SetupError(f"{args.server}: {exc}") from exc
    except (ValueError, LookupError) as exc:
        raise _SetupError(str(exc)) from exc


def _restore_all(jobs: list[Job], restorer: Restorer, args: argparse.Namespace,
                 seed: int) -> int:
    from service.cli.output import OutputExistsError, write_output
    from service.cli.progress import Progress, bars_wanted

    failures = done = 0
    stopped: Exception | None = None
    with contextlib.closing(restorer), \
            Progress(len(jobs), enabled=bars_wanted(args.quiet), echo=not args.quiet) as progress:
        for job in jobs:
            src = job.source.path
            progress.start_image(str(src), restorer.passes)
            try:
                result = restorer.restore(src, job.format, progress.pass_done)
                write_output(job.dest, result.data, overwrite=args.overwrite)
            except OutputExistsError:
                progress.message(f"diffmamba: not written: {job.dest} appeared meanwhile "
                                 f"(--overwrite replaces it)")
                failures += 1
            except restorer.errors as exc:
                progress.message(f"diffmamba: skipping {src}: {getattr(exc, 'detail', exc)}")
                failures += 1
            except restorer.stop_errors as exc:
                stopped = exc
                break
            else:
                done += 1
                (iw, ih), (ow, oh) = result.input_size, result.output_size
                sizes = f"{iw}x{ih} -> {ow}x{oh}" if (iw, ih) != (ow, oh) else f"{ow}x{oh}"
                progress.image_done(f"{src} -> {job.dest} ({sizes}, "
                                    f"{_human_bytes(len(result.data))})")
                continue
            progress.image_done()
    prefix = f"seed {seed}; " if restorer.uses_seed else ""
    left = len(jobs) - done - failures
    not_started = f", {left} not started" if left else ""
    print(f"{prefix}{done} restored, {failures} failed{not_started}")
    if stopped is not None:
        print(f"diffmamba: error: stopped: {stopped}", file=sys.stderr)
    return 1 if failures or stopped is not None else 0

