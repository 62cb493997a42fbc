"""``diffmamba eval``: PSNR/SSIM of the degraded input, a classical baseline and a checkpoint.

    diffmamba eval --task denoise --checkpoint models/denoise.safetensors --size 256 \\
        --json denoise.json --markdown denoise.md
    diffmamba eval --task derain --pairs data/Rain100L --checkpoint derain.safetensors
    diffmamba eval --task deblur --baseline-only --size 256
    diffmamba eval --task derain --grid --checkpoint models/derain.safetensors --size 256 \
        --json grid.json --markdown grid.md

Pairs come from ``--pairs DIR`` (``DIR/input`` + ``DIR/target``) or, by default, the seeded
synthetic set (``--synthetic``: scikit-image's sample photos degraded with the evaluation
parameters; see ``service.evaluation.pairs``). Metrics follow the papers' conventions (8-bit
images, RGB and BT.601 Y); see ``service.evaluation.metrics``.

``--grid`` scores the robustness grid instead (``service.evaluation.grid``): one row per
degradation cell (noise levels and kinds, rain generators and strengths, blur kernels, and the
clean photo itself), each the mean over the evaluation photos, then the task's targets
(``service.evaluation.targets``) as met / not met. It goes through the same restorer and
``evaluate`` as the plain run.

``--task sr`` scores a ×4 checkpoint on LR/HR pairs of the sample photos, once with bicubic
downsampling and once with Real-ESRGAN's second-order degradation: the input row is the LR
image upscaled bicubically, the baseline Lanczos ×4 (``service.evaluation.sr_pairs``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from service.cli.common import add_threads_option, fail, int_in_range, resolve_device

SR_TASK = "sr"


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return n


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n



def add_parser(sub: argparse._SubParsersAction) -> None:
    from service.data.degrade import TASKS
    from service.diffusion import DEFAULT_STEPS, MAX_STEPS

    p = sub.add_parser(
        "eval", help="PSNR/SSIM of input, classical baseline and model on evaluation pairs",
        description="Score the degraded input, the task's classical baseline and a checkpoint "
                    "(PSNR/SSIM on RGB and on the BT.601 Y channel, 8-bit images) and print "
                    "a per-image table with the means.")
    p.add_argument("--task", required=True, choices=(*TASKS, SR_TASK),
                   help="sr: x4 super-resolution, scored on bicubic and on second-order "
                        "degraded LR inputs against bicubic and Lanczos upscaling")
    p.add_argument("--checkpoint", help=".safetensors or BasicSR .pth (Diff-Mamba)")
    p.add_argument("--baseline-only", action="store_true",
                   help="no model: only the input and baseline rows (no --checkpoint)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pairs", metavar="DIR", help="real pairs in DIR/input and DIR/target")
    src.add_argument("--synthetic", action="store_true",
                     help="seeded synthetic pairs from scikit-image's sample photos (default)")
    src.add_argument("--grid", action="store_true",
                     help="the robustness grid: every degradation cell of the task on the "
                          "sample photos, per-cell means and the task's targets")
    p.add_argument("--photos", metavar="DIR",
                   help="with --grid: the clean photos of DIR instead of scikit-image's (say a "
                        "pool's held-out data/pool/val, to choose between checkpoints without "
                        "looking at the test photos)")
    p.add_argument("--seed", type=int, default=0,
                   help="degradation seed of the synthetic set (image i uses seed + i; "
                        "with --grid, image i of cell c uses [seed, c, i])")
    p.add_argument("--size", type=_positive, default=None,
                   help="centre-crop every pair to at most SIZE x SIZE (default: full size)")
    p.add_argument("--limit", type=_positive, default=None, help="evaluate the first N pairs")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="include the classical baseline row (default: yes)")
    p.add_argument("--crop-border", type=_non_negative, default=0,
                   help="pixels ignored at each border by the metrics (default 0)")
    p.add_argument("--steps", type=int_in_range(1, MAX_STEPS), default=DEFAULT_STEPS,
                   help="sampling steps")
    p.add_argument("--sampler-seed", type=int, default=0, help="x_T seed (fixed: repeatable)")
    p.add_argument("--tile", type=int, default=256,
                   help="images larger than this are restored tile by tile")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_threads_option(p)
    p.add_argument("--json", metavar="OUT", help="write per-image and mean metrics as JSON")
    p.add_argument("--markdown", metavar="OUT", help="write the table as markdown")
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> str | None:
    """The usage error, if any, that argparse cannot express."""
    if args.baseline_only:
        if args.checkpoint:
            return "--baseline-only takes no --checkpoint"
        if not args.baseline:
            return "--baseline-only and --no-baseline leave nothing to evaluate"
    elif not args.checkpoint:
        return "--checkpoint is required (or pass --baseline-only)"
    if args.task == SR_TASK and (args.grid or args.pairs):
        return "--task sr evaluates synthetic LR/HR pairs only (no --grid, no --pairs)"
    if args.photos and not args.grid:
        return "--photos chooses the grid's photos: use it with --grid"
    if args.grid and args.seed < 0:
        return f"--grid needs --seed >= 0, got {args.seed}"
    if args.pairs and not Path(args.pairs).is_dir():
        return f"--pairs {args.pairs} is not a folder"
    if not args.baseline_only:
        from service.tiling.grid import validate_tiling

        try:
            validate_tiling(args.tile, args.overlap)
        except ValueError as exc:
            return f"bad --tile/--overlap: {exc}"
    return None


def _load_pairs(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    from service.evaluation.pairs import folder_pairs, synthetic_pairs

    if args.pairs:
        pairs = folder_pairs(args.pairs, size=args.size, limit=args.limit)
        source: dict[str, Any] = {"kind": "pairs", "dir": str(args.pairs)}
    else:
        pairs = synthetic_pairs(args.task, seed=args.seed, size=args.size, limit=args.limit)
        source = {"kind": "synthetic", "seed": args.seed, "evaluation": True}
    source.update(size=args.size, crop_border=args.crop_border, names=[p.name for p in pairs])
    return pairs, source


def _load_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(ModelRestorer, model info) or raises ValueError with a user-facing message."""
    from service.evaluation.runner import ModelRestorer
    from service.models import CheckpointError, load_checkpoint

    try:
        device = resolve_device(args.device)
        loaded = load_checkpoint(args.checkpoint, device=device)
    except (OSError, CheckpointError) as exc:
        raise ValueError(f"cannot load {args.checkpoint}: {exc}") from exc
    # One-pass kinds ignore steps and the sampler seed.
    restorer = ModelRestorer(loaded.model, args.steps, args.sampler_seed, args.tile,
                             args.overlap, device, kind=loaded.kind)
    info = {"checkpoint": str(args.checkpoint), "sha256": loaded.sha256, "arch": loaded.arch,
            "params": loaded.num_params, "steps": args.steps, "sampler_seed": args.sampler_seed,
            "tile": args.tile, "overlap": args.overlap, "device": str(device)}
    return restorer, info


def run(args: argparse.Namespace) -> int:
    from service.evaluation.report import text_table, write_json, write_markdown
    from service.evaluation.runner import evaluate

    problem = _check_args(args)
    if problem:
        return fail(problem)
    try:
        restorer, model_info = (None, None) if args.baseline_only else _load_model(args)
    except (ValueError, OSError, ImportError) as exc:
        return fail(str(exc))
    if args.grid:
        return _run_grid(args, restorer, model_info)
    if args.task == SR_TASK:
        return _run_sr(args, restorer, model_info)
    try:
        pairs, source = _load_pairs(args)
    except (ValueError, OSError, ImportError) as exc:
        return fail(str(exc))
    if not pairs:
        return fail("no evaluation pairs")
    if restorer is not None:
        restorer.warmup()

    def progress(r: Any) -> None:
        timing = f" ({r.model_seconds:.2f} s)" if r.model_seconds is not None else ""
        print(f"{r.name}: {r.height}x{r.width}{timing}", file=sys.stderr)

    try:
        result = evaluate(args.task, restorer, pairs, baseline=args.baseline,
                          crop_border=args.crop_border, on_image=progress)
    except (ValueError, ImportError) as exc:
        return fail(str(exc))
    result.info.update(source=source, model=model_info)
    print(text_table(result))
    try:
        if args.json:
            write_json(result, args.json)
        if args.markdown:
            write_markdown(result, args.markdown, title=f"{args.task} ({_describe(source)})")
    except OSError as exc:
        return fail(f"cannot write the report: {exc}")
    return 0


def _run_sr(args: argparse.Namespace, restorer: Any, model_info: dict[str, Any] | None) -> int:
    """``--task sr``: one table per LR generator (bicubic, second order), the same restorer."""
    from service.evaluation.report import markdown_table, text_table
    from service.evaluation.runner import evaluate
    from service.evaluation.sr_pairs import SR_DEGRADATIONS, sr_pairs

    if restorer is not None:
        restorer.warmup()
    results = {}
    try:
        for degradation in SR_DEGRADATIONS:
            pairs = sr_pairs(degradation, seed=args.seed, size=args.size, limit=args.limit)
            result = evaluate(SR_TASK, restorer, pairs, baseline=args.baseline,
                              crop_border=args.crop_border)
            result.info.update(source={"kind": "synthetic-sr", "degradation": degradation,
                                       "seed": args.seed, "size": args.size,
                                       "names": [p.name for p in pairs]}, model=model_info)
            results[degradation] = result
    except (ValueError, ImportError) as exc:
        return fail(str(exc))
    for degradation, result in results.items():
        print(f"sr x4, {degradation} LR inputs")
        print(text_table(result))
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(
                {k: r.to_dict() for k, r in results.items()}, indent=2))
        if args.markdown:
            Path(args.markdown).write_text("".join(
                f"## sr x4, {k} LR inputs\n\n{markdown_table(r)}\n" for k, r in results.items()))
    except OSError as exc:
        return fail(f"cannot write the report: {exc}")
    return 0


def _describe(source: dict[str, Any]) -> str:
    where = (f"pairs {source['dir']}" if source["kind"] == "pairs"
             else f"synthetic, seed {source['seed']}")
    size = f", centre {source['size']}px" if source.get("size") else ""
    return f"{where}, {len(source['names'])} images{size}"


def _run_grid(args: argparse.Namespace, restorer: Any, model_info: dict[str, Any] | None) -> int:
    """``--grid``: every cell through ``evaluate`` with the same restorer, then the targets."""
    from service.data.evaluation import evaluation_images, folder_images
    from service.evaluation.grid_report import grid_text, write_grid_json, write_grid_markdown
    from service.evaluation.grid_runner import run_grid

    try:
        images = folder_images(args.photos) if args.photos else evaluation_images()
    except (ValueError, ImportError) as exc:
        return fail(str(exc))
    if restorer is not None:
        restorer.warmup()

    def progress(cell: Any, r: Any) -> None:
        timing = f" ({r.model_seconds:.2f} s)" if r.model_seconds is not None else ""
        print(f"{cell.name} / {r.name}: {r.height}x{r.width}{timing}", file=sys.stderr)

    start = time.perf_counter()
    try:
        result = run_grid(args.task, restorer, seed=args.seed, size=args.size, limit=args.limit,
                          baseline=args.baseline, crop_border=args.crop_border, images=images,
                          on_image=progress)
    except (ValueError, ImportError) as exc:
        return fail(str(exc))
    names = list(images)[: args.limit]
    source = {"kind": "grid", "seed": args.seed, "size": args.size, "limit": args.limit,
              "crop_border": args.crop_border, "names": names, "photos": args.photos}
    result.info.update(source=source, model=model_info,
                       wall_seconds=round(time.perf_counter() - start, 1))
    print(grid_text(result))
    what = Path(args.checkpoint).name if args.checkpoint else "baseline only"
    size = f", centre {args.size}px" if args.size else ""
    photos = f" of {args.photos}" if args.photos else ""
    title = (f"{args.task} robustness grid ({what}, seed {args.seed}, {len(names)} images"
             f"{photos}{size})")
    try:
        if args.json:
            write_grid_json(result, args.json)
        if args.markdown:
            write_grid_markdown(result, args.markdown, title=title)
    except OSError as exc:
        return fail(f"cannot write the report: {exc}")
    return 0
