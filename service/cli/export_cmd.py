"""``diffmamba export``: the network as ONNX or a TensorRT plan for one tile size.

Without ``--output`` the file goes where the service's engine cache looks
(``<checkpoint dir>/.engines/<name>-t<tile>-b<batch>.onnx``), so exporting at image build time
spares the service the export at start-up.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from service.cli.common import fail, int_in_range, positive_int

FORMATS = {"onnx": (".onnx",), "tensorrt": (".plan", ".engine", ".trt")}
EXIT_UNAVAILABLE = 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    from service.engines.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    p = sub.add_parser("export", help="export the network to ONNX or a TensorRT engine")
    p.add_argument("--checkpoint", required=True, help="checkpoint (.safetensors or .pth)")
    p.add_argument("--tile", type=positive_int, default=256,
                   help="static tile height and width, a multiple of 8 (default 256)")
    p.add_argument("--max-batch", type=positive_int, default=8,
                   help="largest batch (TensorRT profile 1..N; ONNX batch stays dynamic)")
    p.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    p.add_argument("--output", default=None,
                   help="output file (default: the service's engine cache next to the checkpoint)")
    p.add_argument("--opset", type=int_in_range(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET,
                   help=f"ONNX opset ({MIN_OPSET}..{MAX_OPSET}, default {DEFAULT_OPSET})")
    p.add_argument("--fp16", action="store_true", help="TensorRT: allow fp16 kernels")
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments, or None."""
    if args.tile % 8:
        return f"--tile must be a multiple of 8 (the network downsamples 3 times), got {args.tile}"
    if args.fp16 and args.format != "tensorrt":
        return "--fp16 applies to --format tensorrt only (the ONNX graph stays float32)"
    if not Path(args.checkpoint).is_file():
        return f"checkpoint not found: {args.checkpoint}"
    if args.output is not None and Path(args.output).suffix not in FORMATS[args.format]:
        wanted = " or ".join(FORMATS[args.format])
        return f"--output for --format {args.format} must end in {wanted}, got {args.output}"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _check_args(args)
    if problem:
        return fail(problem)
    from service.engines import ENGINE_VERSION, EngineError, EngineUnavailable
    from service.engines.cache import default_path
    from service.engines.onnx_export import export_onnx
    from service.models import CheckpointError, load_checkpoint

    checkpoint = Path(args.checkpoint)
    precision = "fp16" if args.fp16 else "fp32"
    suffix = FORMATS[args.format][0]
    out = Path(args.output) if args.output else default_path(
        checkpoint, args.tile, args.max_batch, suffix, precision)
    try:
        if args.format == "tensorrt":
            from service.engines.tensorrt_build import require_tensorrt

            require_tensorrt()  # before the (slow) export: say what is missing at once
        loaded = load_checkpoint(checkpoint, device="cuda" if args.format == "tensorrt" else "cpu")
    except EngineUnavailable as exc:
        return fail(f"cannot build a TensorRT engine here: {exc}", EXIT_UNAVAILABLE)
    except (CheckpointError, OSError, ValueError) as exc:
        return fail(f"cannot load {checkpoint}: {exc}")
    meta = {"checkpoint_sha256": loaded.sha256 or "", "max_batch": str(args.max_batch),
            "arch": loaded.arch}
    try:
        if args.format == "onnx":
            export_onnx(loaded.model, loaded.kind, args.tile, out, metadata=meta,
                        opset=args.opset)
        else:
            from service.engines.tensorrt_build import build_plan

            with tempfile.TemporaryDirectory() as tmp:
                onnx_path = export_onnx(loaded.model, loaded.kind, args.tile,
                                        Path(tmp) / "model.onnx", metadata=meta, opset=args.opset)
                build_plan(onnx_path, out, kind=loaded.kind, tile=args.tile,
                           max_batch=args.max_batch, precision=precision,
                           metadata={**meta, "engine_version": ENGINE_VERSION})
    except EngineUnavailable as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    except EngineError as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    print(f"wrote {out} ({args.format}, {loaded.arch} {loaded.kind}, tile {args.tile}, "
          f"batch 1..{args.max_batch}, opset {args.opset}"
          + (", fp16" if args.fp16 else "") + ")")
    return 0
