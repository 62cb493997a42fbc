"""A serialized TensorRT engine from the exported ONNX, with a batch profile 1..max_batch.

Why a sidecar JSON: a TensorRT plan has no place for our metadata, and a plan only runs with the
TensorRT version and GPU it was built for, so those go next to it (``<plan>.json``) with the
checkpoint hash, tile, batch and engine version, and the cache checks all of them.
tensorrt is imported lazily: the package and CUDA exist only on GPU machines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.engines.base import EngineError, EngineUnavailable
from service.models.kinds import model_kind

WORKSPACE_BYTES = 4 << 30


def require_tensorrt() -> Any:
    """The tensorrt module, or EngineUnavailable saying what is missing."""
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailable("TensorRT needs a CUDA GPU, and torch sees none")
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineUnavailable(
            "TensorRT is not installed: pip install 'diffmamba-service[tensorrt]' "
            "(needs CUDA and an NVIDIA driver)"
        ) from exc
    return tensorrt


def runtime_identity() -> dict[str, str]:
    """What a plan is tied to: the TensorRT version and the GPU model."""
    import torch

    trt = require_tensorrt()
    return {"tensorrt_version": str(trt.__version__),
            "gpu": torch.cuda.get_device_name(torch.cuda.current_device())}


def sidecar(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def read_plan_metadata(plan: Path) -> dict[str, str]:
    """The sidecar's metadata; raises when it is missing or not a JSON object."""
    data = json.loads(sidecar(plan).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{sidecar(plan)} does not hold a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def build_plan(onnx_path: Path, plan: Path, *, kind: str, tile: int, max_batch: int,
               precision: str, metadata: Mapping[str, str]) -> Path:
    """Parse ``onnx_path``, build with an optimisation profile for batch 1..max_batch and write
    ``plan`` and its sidecar atomically. precision: fp32, fp16 or bf16 (builder flags; I/O stay
    float32)."""
    trt = require_tensorrt()
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        if not hasattr(trt.BuilderFlag, "BF16"):
            raise EngineUnavailable(f"TensorRT {trt.__version__} has no bf16 support")
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    channels = model_kind(kind).input_channels
    profile.set_shape("x", (1, channels, tile, tile), (max_batch, channels, tile, tile),
                      (max_batch, channels, tile, tile))
    if model_kind(kind).takes_timestep:
        profile.set_shape("t", (1,), (max_batch,), (max_batch,))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    plan.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.with_name(f".{plan.name}.{os.getpid()}.tmp")
    tmp.write_bytes(bytes(serialized))
    meta = {**metadata, **runtime_identity(), "tile": str(tile), "max_batch": str(max_batch),
            "precision": precision, "kind": kind}
    sidecar_tmp = tmp.with_name(tmp.name + ".json")
    sidecar_tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, plan)
    os.replace(sidecar_tmp, sidecar(plan))
    return plan
