"""``diffmamba train``: the release's two-stage training, resumable across sessions.

* ``train --workdir DIR --task derain --clean data/pool [...]``: stage 1 (noise estimation),
  then stage 2 (the S-step sampler fine-tuned end to end), as ``--stage`` says.
* ``train --workdir DIR --resume [--time-limit MIN]``: continue bit-for-bit from DIR/state.pt.
* ``train export --workdir DIR --output models/derain.safetensors [--weights params]``: the run's
  current weights (EMA, or the live ones, in the .safetensors; params and params_ema in the .pth
  written beside it). ``--best``: the weights that scored best on the grid validation instead.
* Grid validation (runs on clean photos): each validation also scores the EMA weights on the
  robustness grid's cells (for sr: its two LR generators) applied to ``--val-grid`` held-out
  photos (mean gain, penalised by a cell made worse and by a clean photo below 33 dB) and keeps
  the best ones as DIR/best.safetensors; with ``--init`` the starting weights are scored first.
* ``train --model vmambair ...``: VmambaIR instead, one stage of L1 regression (``--stage``
  is 1 or left out; the sampler options do not apply). Without explicit schedules it uses the
  progressive patches of the Restormer deraining recipe the release builds on (see below).
* ``train --model vmambair-sr --clean data/pool ...``: VmambaIR's ×4 real-world SR network
  (MambaRealSR11), L1 on LR/HR crop pairs from the clean pool, the LR made by Real-ESRGAN's
  second-order degradation (``--task sr``, implied). Patches are HR sizes, multiples of 4;
  validation scores the gain in PSNR-Y over bicubic upscaling on held-out photos, for
  bicubic and second-order LR inputs (the full score: ``diffmamba eval --task sr``).

Per-stage options (``--max-iters``, ``--lr``, ``--min-lr``, ``--warmup``) take ``A`` or ``A,B``
(stage 1, stage 2); one value applies to the stage being run (to both for --max-iters/--warmup).

On ``--resume`` options left out keep their stored values and repeating the first command line
is fine. A different value is refused where it would break the run's continuity: the model
always; a stage's --lr/--min-lr/--warmup once that stage has started; data, schedules and
optimizer settings while a stage is in progress. --stage, --max-iters and validation options may
always change. Exit status: 0 when done or stopped by --time-limit/--session-iters (state saved),
128+N when stopped (and saved) by signal N, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from service.cli.common import (
    add_threads_option,
    fail,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_device,
)

MODEL_OPTIONS = {  # CLI dest -> DiffMambaConfig / VmambaIRConfig field
    "dim": "dim", "blocks": "num_blocks", "d_state": "d_state", "expand": "ssm_expand",
    "ffn_factor": "ffn_expansion_factor", "norm": "layer_norm_type",
    "refinement_blocks": "num_refinement_blocks",
}
SINGLE_PASS_ONLY = ("refinement_blocks",)
RELEASE_SCHEDULES = {  # model -> (patch schedule, batch schedule) when none is given
    # Restormer's deraining recipe (VmambaIR's training code is Restormer's): patches grow
    # 128 -> 384 while the batch shrinks 8 -> 1, over 300k iterations.
    "vmambair": (
        [[128, 0], [160, 92_000], [192, 156_000], [256, 204_000], [320, 240_000],
         [384, 276_000]],
        [[8, 0], [5, 92_000], [4, 156_000], [2, 204_000], [1, 240_000]],
    ),
}
PER_STAGE = ("max_iters", "lr", "min_lr", "warmup")
PLAIN = ("task", "clean", "val_clean", "pairs", "val_pairs", "stage", "weight_decay",
         "ema_decay", "ema_warmup", "grad_clip", "image_loss", "psnr_ceiling", "steps", "alpha",
         "seed", "epoch_size", "clean_share", "min_detail", "degradation", "val_count",
         "val_patch", "val_seed", "val_grid", "init", "init_weights")
MODEL_ARCHS = {"diffmamba": "diffmamba", "vmambair": "vmambair", "vmambair-sr": "mambarealsr11"}
"""``--model`` name -> registered architecture."""
MODELS = tuple(MODEL_ARCHS)
SR_TASK = "sr"





def _unit_interval(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return number


def _blocks(value: str) -> list[int]:
    try:
        blocks = [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not 4 comma-separated integers") from None
    if len(blocks) != 4 or min(blocks) < 1:
        raise argparse.ArgumentTypeError(f"need 4 positive block counts like 1,1,1,1, got {value}")
    return blocks


def _schedule(value: str) -> list[list[int]]:
    from service.training.schedule import parse_piecewise

    try:
        return [list(e) for e in parse_piecewise(value)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    from service.data.degrade import TASKS

    p = sub.add_parser(
        "train", help="train a Diff-Mamba (two stages) or VmambaIR model, resumable",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=run, train_action=None)
    p.add_argument("--workdir", help="run folder: state.pt, log.jsonl, stage exports")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir")

    d = p.add_argument_group("data")
    d.add_argument("--task", choices=(*TASKS, SR_TASK),
                   help="degradation to learn (synthetic data); sr with --model vmambair-sr")
    d.add_argument("--clean", help="clean photos: a pool (DIR/train, DIR/val) or a folder")
    d.add_argument("--val-clean", help="held-out clean photos (default: the pool's val/)")
    d.add_argument("--pairs", help="real pairs: DIR/input + DIR/target (Rain13K/SIDD/GoPro)")
    d.add_argument("--val-pairs", help="held-out real pairs, same layout")
    d.add_argument("--epoch-size", type=positive_int,
                   help="synthetic samples per epoch (default 10000)")
    d.add_argument("--clean-share", type=_unit_interval,
                   help="fraction of synthetic pairs left clean, input = target; for sr, LR by"
                        " plain bicubic downsampling (default 0.1)")
    d.add_argument("--min-detail", type=_unit_interval, metavar="D",
                   help="redraw training crops flatter than D: the mean absolute step between "
                        "neighbouring pixels' luma, 0..1 (up to 8 draws, then the busiest "
                        "one); e.g. 0.01 to train on texture rather than sky (default 0: off)")
    d.add_argument("--degradation", metavar="VARIANT",
                   help="a named variant of the task's training degradation instead of the "
                        "default one: deblur's 'mild' (kernels 7-15 px) to start a "
                        "curriculum, or 'linear' (straight-line motion 5-25 px only); "
                        "validation keeps the task's full grid")
    d.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no random flips/rotations")
    d.add_argument("--no-rotate", dest="rotate", action="store_false", default=None,
                   help="flips only (pairs)")

    m = p.add_argument_group("model (default: the published config, Diff-Mamba 36.6 M or "
                             "VmambaIR 28.7 M)")
    m.add_argument("--model", choices=MODELS, help="network (default diffmamba)")
    m.add_argument("--dim", type=positive_int, help="width of level 1 (default 48)")
    m.add_argument("--blocks", type=_blocks,
                   help="blocks per level, e.g. 1,1,1,1 (4,6,6,8; VmambaIR 3,5,7,9)")
    m.add_argument("--refinement-blocks", type=non_negative_int,
                   help="VmambaIR refinement blocks at full resolution (default 2)")
    m.add_argument("--d-state", type=positive_int,
                   help="SSM state size N (default 32; VmambaIR 16)")
    m.add_argument("--expand", type=positive_float,
                   help="SSM expansion (default 2; VmambaIR 1)")
    m.add_argument("--ffn-factor", type=positive_float, help="FFN expansion (default 2.66)")
    m.add_argument("--norm", choices=("WithBias", "BiasFree"),
                   help="LayerNorm type (default: BiasFree for denoise, else WithBias)")

    t = p.add_argument_group("optimisation (A or A,B = stage 1, stage 2)")
    t.add_argument("--stage", choices=("1", "2", "both"), help="stages to run (default both)")
    t.add_argument("--max-iters", help="iterations per stage (default 300000,20000)")
    t.add_argument("--lr", help="peak learning rate (default 3e-4,1e-5)")
    t.add_argument("--min-lr", help="final cosine learning rate (default 1e-6,1e-7)")
    t.add_argument("--warmup", help="linear warmup iterations (default 0,0)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-4)")
    t.add_argument("--ema-decay", type=float, help="EMA decay (default 0.999)")
    t.add_argument("--ema-warmup", type=non_negative_int,
                   help="EMA decay ramp: min(decay, (1+t)/(N+t)) at iteration t of a stage; "
                   "0 = constant decay (default 10)")
    t.add_argument("--grad-clip", type=float, help="max gradient norm, 0 = off (default)")
    t.add_argument("--loss", dest="image_loss", metavar="{l1,psnr,ms-ssim-l1}",
                   help="how a restoration is compared with the clean image, in a single-pass "
                        "network's regression and in Diff-Mamba's stage 2: l1, psnr (minus the "
                        "mean PSNR of the batch's images: light and clean inputs weigh as much "
                        "as heavy ones) or ms-ssim-l1 (--alpha·(1 − MS-SSIM) + (1 − alpha)·L1); "
                        "default: the release's, l1 for VmambaIR, ms-ssim-l1 for Diff-Mamba")
    t.add_argument("--psnr-ceiling", type=positive_float, metavar="DB",
                   help="with --loss psnr: images restored above DB dB add nothing to the loss, "
                        "so clean pairs hold a clean photo near DB instead of pulling the "
                        "network towards the identity (default: no ceiling)")
    t.add_argument("--patch-schedule", type=_schedule,
                   help="patch size from an iteration on, e.g. 64:0,96:2000,128:4000 (64)")
    t.add_argument("--batch-schedule", type=_schedule,
                   help="batch size from an iteration on, e.g. 8:0,4:2000 (default 8)")
    t.add_argument("--steps", type=positive_int, help="sampler steps S (default 4)")
    t.add_argument("--alpha", type=float, help="stage-2 MS-SSIM weight (default 0.84)")
    t.add_argument("--seed", type=int, help="seed of init, data and noise (default 0)")
    t.add_argument("--init", help="start from these weights (.pth/.safetensors): a stage-1 "
                   "checkpoint for --stage 2, or any Diff-Mamba checkpoint to fine-tune in stage 1")
    t.add_argument("--init-weights", choices=("ema", "params"),
                   help="which stage-1 weights start stage 2 (default ema)")

    v = p.add_argument_group("validation")
    v.add_argument("--val-count", type=non_negative_int, help="held-out crops (default 4)")
    v.add_argument("--val-patch", type=positive_int, help="their size (default 128)")
    v.add_argument("--val-seed", type=int, help="their seed and x_T's (default 0)")
    v.add_argument("--val-grid", type=non_negative_int, metavar="N",
                   help="held-out photos scored on the robustness grid's cells at each "
                        "validation; the best-scoring weights are kept as best.safetensors "
                        "(default 4, 0 = off; runs on clean photos)")
    v.add_argument("--val-every", type=non_negative_int, default=1000,
                   help="validate every K iterations, 0 = only at stage ends (default 1000)")
    v.add_argument("--val-batch", type=positive_int, default=4, help="crops per pass")
    v.add_argument("--keep-validated", action="store_true",
                   help="also write the EMA weights of every validation to "
                        "DIR/validated/stage<S>-step<N>.safetensors (servable as they are), to "
                        "compare the validated steps on the evaluation grid afterwards")

    r = p.add_argument_group("session")
    r.add_argument("--save-every", type=positive_int, default=500,
                   help="write state.pt every K iterations (default 500)")
    r.add_argument("--log-every", type=positive_int, default=10,
                   help="log.jsonl line every K iterations (default 10)")
    r.add_argument("--time-limit", type=positive_float, metavar="MINUTES",
                   help="save and exit before this invocation runs longer")
    r.add_argument("--session-iters", type=positive_int, metavar="N",
                   help="save and exit after N iterations of this invocation")
    add_threads_option(r)
    r.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: convolutions and matmuls in bf16 (CPU with amx_bf16/avx512_bf16, "
                        "or CUDA), the selective scan and the loss in fp32 (default fp32)")
    r.add_argument("--workers", type=non_negative_int, default=0,
                   help="DataLoader worker processes (default 0)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    r.add_argument("--output", help="also write the final stage's weights here (.safetensors"
                   " + .pth beside it)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")

    tsub = p.add_subparsers(dest="train_action", required=False, metavar="[export]")
    e = tsub.add_parser("export", help="write a run's current weights as .safetensors + .pth")
    e.add_argument("--workdir", required=True, help="the run folder (holds state.pt)")
    e.add_argument("--output", required=True, help="target .safetensors (the .pth goes beside)")
    e.add_argument("--weights", choices=("ema", "params"), default="ema",
                   help="serve the EMA weights (default) or the live ones (params)")
    e.add_argument("--best", action="store_true",
                   help="the weights that scored best on the grid validation instead of the "
                        "current ones")
    e.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from service.training.export import export_best, export_from_workdir

    if args.best and args.weights != "ema":
        return fail("--best exports the kept EMA weights; it does not combine with --weights")
    try:
        if args.best:
            st, pth = export_best(args.workdir, args.output)
        else:
            st, pth = export_from_workdir(args.workdir, args.output, args.weights)
    except (FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    print(f"wrote {st} and {pth}")
    return 0


def _floats_or_ints(text: str, cast: type, name: str) -> list[Any]:
    try:
        values = [cast(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')}: {text!r} is not A or A,B") from None
    if not 1 <= len(values) <= 2:
        raise ValueError(f"--{name.replace('_', '-')}: give one value or two (stage 1,stage 2)")
    return values


def _per_stage(name: str, text: str, stage: str, base: tuple[Any, Any]) -> tuple[Any, Any]:
    """``A`` applies to the stage being run (both stages for --max-iters/--warmup)."""
    cast = int if name in ("max_iters", "warmup") else float
    values = _floats_or_ints(text, cast, name)
    if len(values) == 2:
        return values[0], values[1]
    (value,) = values
    if stage == "1":
        return value, base[1]
    if stage == "2":
        return base[0], value
    if name in ("lr", "min_lr"):
        raise ValueError(f"--{name.replace('_', '-')}: with --stage both give two values "
                         "(stage 1,stage 2), e.g. 3e-4,1e-5")
    return value, value


def _given_options(args: argparse.Namespace, base: Any) -> dict[str, Any]:
    """TrainConfig fields the user set on the command line (None = not given)."""
    stage = args.stage or base.stage
    given: dict[str, Any] = {k: getattr(args, k) for k in PLAIN}
    given["augment"], given["rotate"] = args.augment, args.rotate
    for name in PER_STAGE:
        text = getattr(args, name)
        given[name] = None if text is None else _per_stage(name, text, stage, getattr(base, name))
    given["patch_schedule"] = args.patch_schedule
    given["batch_schedule"] = args.batch_schedule
    model_given = {MODEL_OPTIONS[k]: getattr(args, k) for k in MODEL_OPTIONS
                   if getattr(args, k) is not None}
    given["model"] = {**base.model, **model_given} if model_given else None
    given["arch"] = None if args.model is None else MODEL_ARCHS[args.model]
    return given


def _fresh_config(args: argparse.Namespace) -> Any:
    from service.models.registry import ARCHITECTURES
    from service.training.config import TrainConfig

    arch = MODEL_ARCHS[args.model or "diffmamba"]
    scale = ARCHITECTURES[arch].kind.scale
    if (scale > 1) != (args.task == SR_TASK) and not (scale > 1 and args.task is None):
        raise ValueError(f"--task {args.task} does not fit --model {args.model or 'diffmamba'}"
                         f" (--task sr goes with --model vmambair-sr)")
    if scale > 1:
        if args.pairs is not None:
            raise ValueError("--model vmambair-sr trains on --clean photos (LR made on the fly)")
        args.task = SR_TASK
    model_given = {MODEL_OPTIONS[k]: getattr(args, k) for k in MODEL_OPTIONS
                   if getattr(args, k) is not None}
    if args.init and model_given:
        raise ValueError("model size options cannot be combined with --init (the checkpoint "
                         "fixes the model)")
    single_pass = not ARCHITECTURES[arch].kind.takes_timestep
    if not single_pass:
        for name in SINGLE_PASS_ONLY:
            if getattr(args, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')} applies to --model vmambair-sr"
                                 " or vmambair only")
    elif args.stage not in (None, "1"):
        raise ValueError(f"--model {arch} trains in one stage (L1 regression): --stage "
                         f"{args.stage} does not apply")
    if "layer_norm_type" not in model_given:
        model_given["layer_norm_type"] = "BiasFree" if args.task == "denoise" else "WithBias"
    model = ARCHITECTURES[arch].config_from_dict(model_given).to_dict()
    stage = "1" if single_pass else "both"
    defaults = TrainConfig(model=model, arch=arch, clean=".", task="derain", stage=stage)
    given = {k: v for k, v in _given_options(args, defaults).items() if v is not None}
    given.pop("model", None)
    given["arch"], given["stage"] = arch, given.get("stage", stage)
    if arch in RELEASE_SCHEDULES:
        patches, batches = RELEASE_SCHEDULES[arch]
        given.setdefault("patch_schedule", patches)
        given.setdefault("batch_schedule", batches)
    if args.clean is None and args.pairs is None:
        raise ValueError("no training data: give --task T --clean DIR or --pairs DIR")
    if args.clean is not None and args.pairs is not None:
        raise ValueError("give either --clean (synthetic) or --pairs (real), not both")
    for flag, path in (("--clean", args.clean), ("--pairs", args.pairs),
                       ("--val-clean", args.val_clean), ("--val-pairs", args.val_pairs),
                       ("--init", args.init)):
        if path is not None and not Path(path).exists():
            raise ValueError(f"{flag} {path}: no such file or folder")
    return TrainConfig(model=model, **given)


def run(args: argparse.Namespace) -> int:
    from service.engines.precision import resolve_precision
    from service.models import CheckpointError
    from service.training.config import TrainConfig
    from service.training.state import load_state, state_path
    from service.training.trainer import RunOptions, Trainer

    if not args.workdir:
        return fail("train needs --workdir DIR (where the run's state and outputs live)")
    workdir = Path(args.workdir)
    has_state = state_path(workdir).is_file()
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        return fail(str(exc))
    precision, why = resolve_precision(args.precision, device)
    if why is not None:
        print(f"diffmamba: precision {args.precision}: {why}; training in fp32", file=sys.stderr)
    opts = RunOptions(
        workdir=workdir, save_every=args.save_every, val_every=args.val_every,
        val_batch=args.val_batch, log_every=args.log_every,
        time_limit_s=None if args.time_limit is None else 60 * args.time_limit,
        session_iters=args.session_iters,
        workers=args.workers, progress=args.progress, device=device,
        precision=precision,
        output=Path(args.output) if args.output else None,
        keep_validated=args.keep_validated,
    )
    try:
        if args.resume:
            if not has_state:
                return fail(f"--resume: no state.pt in {workdir} (start without --resume)")
            stored = TrainConfig.from_dict(load_state(state_path(workdir))["config"])
            given = _given_options(args, stored)
            trainer = Trainer.resume(opts, given)
        else:
            if has_state:
                return fail(f"{workdir} already holds a run (state.pt): add --resume to continue"
                            " it, or choose another --workdir")
            cfg = _fresh_config(args)
            trainer = Trainer.create(cfg, opts)
        reason = trainer.run()
    except (ValueError, FileNotFoundError, CheckpointError, FloatingPointError) as exc:
        return fail(str(exc))
    where = f"stage {trainer.stage}, iteration {trainer.step}"
    if reason == "done":
        print(f"training done ({where}); exports in {workdir}", file=sys.stderr)
        return 0
    print(f"stopped ({reason}) at {where}; state saved in {workdir / 'state.pt'}; continue with"
          " --resume", file=sys.stderr)
    if reason in ("time_limit", "session_iters"):
        return 0
    signum = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}.get(reason, signal.SIGINT)
    return 128 + int(signum)
