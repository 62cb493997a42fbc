"""From a loaded checkpoint and options to a ready engine: choose, build or load from cache.

Failures are loud: an engine that was asked for but cannot be built (no onnxruntime, no GPU for
TensorRT) raises EngineError, so start-up fails with the reason in /readyz instead of quietly
serving another engine. Only precision degrades gracefully (to fp32, logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from service.engines.base import Engine, EngineError, EngineUnavailable
from service.engines.cache import EngineCache, expected_metadata
from service.engines.compiled import CompiledEngine
from service.engines.cuda_graphs import CudaGraphEngine
from service.engines.eager import TorchEngine
from service.engines.onnx_export import export_onnx, read_onnx_metadata, require_onnx
from service.engines.options import EngineOptions
from service.engines.ort_engine import OnnxRuntimeEngine, require_onnxruntime
from service.engines.precision import decide_precision, resolve_precision
from service.engines.warmup import warmup_inputs
from service.models import LoadedModel

logger = logging.getLogger("service.engines")


def checked_torch_engine(loaded: LoadedModel, device: torch.device, precision: str, tile: int,
                         label: str) -> TorchEngine:
    """The eager engine at ``precision`` if it stays within 45 dB of fp32 on the warm-up tile,
    else at fp32 (logged either way). ``auto`` and hardware support: ``resolve_precision``."""
    fp32 = TorchEngine(loaded.model, loaded.kind, device)
    requested = precision
    precision, why = resolve_precision(requested, device)
    if why is not None:  # asked for explicitly, the user should hear why it is not used
        (logger.info if requested == "auto" else logger.warning)(
            "%s: precision %s: %s; running fp32", label, requested, why)
    if precision == "fp32":
        return fp32
    reduced = TorchEngine(loaded.model, loaded.kind, device, precision)
    x, t = warmup_inputs(loaded.kind, tile)
    decision = decide_precision(precision, fp32.run(x, t), reduced.run(x, t))
    (logger.warning if decision.fell_back else logger.info)("%s: %s", label, decision.log_line())
    return fp32 if decision.fell_back else reduced


def _onnx_file(loaded: LoadedModel, options: EngineOptions, checkpoint: Path,
               label: str) -> tuple[EngineCache, Path, Callable[[Path], Path]]:
    """The cached (or freshly exported) ONNX file, its cache and how to rebuild it."""
    require_onnx()
    cache = EngineCache(checkpoint, options.tile, options.max_batch, ".onnx",
                        configured_dir=options.cache_dir)
    meta = expected_metadata(loaded.sha256, options.tile, options.max_batch,
                             {"kind": loaded.kind.name})

    def build(path: Path) -> Path:
        return export_onnx(loaded.model, loaded.kind, options.tile, path,
                           metadata={**meta, "arch": loaded.arch}, opset=options.opset)

    return cache, cache.get_or_build(read_onnx_metadata, meta, build, label), build


def onnxruntime_engine(loaded: LoadedModel, options: EngineOptions, checkpoint: Path,
                       fallback: Engine, label: str) -> OnnxRuntimeEngine:
    require_onnxruntime()
    cache, path, build = _onnx_file(loaded, options, checkpoint, label)

    def open_engine(p: Path) -> OnnxRuntimeEngine:
        return OnnxRuntimeEngine(p, loaded.kind, options.tile, options.max_batch, fallback)

    try:
        return open_engine(path)
    except EngineUnavailable:
        raise
    except Exception as exc:  # valid metadata, but the graph itself does not load
        logger.error("%s: onnxruntime cannot load %s (%s: %s); rebuilding it", label, path,
                     type(exc).__name__, exc)
        return open_engine(cache.build(build, label))


def tensorrt_engine(loaded: LoadedModel, device: torch.device, options: EngineOptions,
                    checkpoint: Path, fallback: TorchEngine, label: str) -> Engine:
    from service.engines.tensorrt_build import (
        build_plan,
        read_plan_metadata,
        require_tensorrt,
        runtime_identity,
    )
    from service.engines.tensorrt_engine import TensorRTEngine

    require_tensorrt()
    if device.type != "cuda":
        raise EngineUnavailable(f"engine tensorrt needs DIFFMAMBA_DEVICE cuda (got {device})")
    _, onnx_path, _ = _onnx_file(loaded, options, checkpoint, label)

    def plan_for(precision: str) -> Path:
        cache = EngineCache(checkpoint, options.tile, options.max_batch, ".plan", precision,
                            options.cache_dir)
        meta = expected_metadata(loaded.sha256, options.tile, options.max_batch,
                                 {"kind": loaded.kind.name, "precision": precision,
                                  **runtime_identity()})

        def build(path: Path) -> Path:
            return build_plan(onnx_path, path, kind=loaded.kind, tile=options.tile,
                              max_batch=options.max_batch, precision=precision,
                              metadata={**meta, "arch": loaded.arch})

        return cache.get_or_build(read_plan_metadata, meta, build, label)

    def open_engine(plan: Path) -> TensorRTEngine:
        return TensorRTEngine(plan, loaded.kind, options.tile, options.max_batch, fallback,
                              device)

    precision, why = resolve_precision(options.precision, device)
    if why is not None:
        logger.warning("%s: TensorRT precision %s: %s; building fp32", label, options.precision,
                       why)
    engine = open_engine(plan_for(precision))
    if precision != "fp32":
        reference = TorchEngine(loaded.model, loaded.kind, device)
        x, t = warmup_inputs(loaded.kind, options.tile)
        decision = decide_precision(precision, reference.run(x, t), engine.run(x, t))
        (logger.warning if decision.fell_back else logger.info)("%s: TensorRT %s", label,
                                                                decision.log_line())
        if decision.fell_back:
            engine = open_engine(plan_for("fp32"))
    return engine


def build_engine(loaded: LoadedModel, device: torch.device, options: EngineOptions,
                 checkpoint: Path, label: str | None = None) -> Engine:
    """The engine ``options.engine`` for ``loaded`` on ``device`` (not yet warmed)."""
    label = label or checkpoint.stem
    name = options.engine
    if name == "tensorrt" and device.type != "cuda":
        raise EngineUnavailable(f"{label}: engine tensorrt needs a CUDA device (got {device})")
    eager = checked_torch_engine(loaded, device, options.precision, options.tile, label)
    try:
        if name == "torch":
            if device.type == "cuda" and options.cuda_graphs:
                return CudaGraphEngine(eager, options.tile, options.max_batch)
            return eager
        if name == "compile":
            return CompiledEngine(eager, options.tile, options.max_batch)
        if options.precision not in ("fp32", "auto") and name == "onnxruntime":
            logger.warning("%s: the onnxruntime engine runs the fp32 graph (precision %s "
                           "applies to torch and tensorrt)", label, options.precision)
        if name == "onnxruntime":
            return onnxruntime_engine(loaded, options, checkpoint, eager, label)
        if name == "tensorrt":
            return tensorrt_engine(loaded, device, options, checkpoint, eager, label)
    except EngineError as exc:
        raise type(exc)(f"{label}: {exc}") from exc
    raise EngineError(f"{label}: unknown engine {name!r}")
