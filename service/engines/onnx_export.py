"""The network as ONNX: dynamic batch, static tile, metadata that says what it was built from.

Why static H = W = tile: the service feeds equal-size tiles, and a fixed spatial size lets
ONNX Runtime and TensorRT plan memory and pick kernels once. The batch axis stays dynamic so one
file serves every batch up to the TensorRT profile's maximum.

The selective scan is exported in its chunked closed form (service.scan.chunked): the dispatch
takes it whenever torch is exporting, whatever DIFFMAMBA_SCAN says, because the numba and CUDA
kernels are not standard ops.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.engines.base import ENGINE_VERSION, EngineError, EngineUnavailable
from service.engines.eager import forward
from service.engines.warmup import warmup_inputs
from service.models.kinds import model_kind

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 14, 20  # the TorchScript exporter's tested range for these ops
OUTPUT_NAME = "out"


def input_names(kind: str) -> list[str]:
    return ["x", "t"] if model_kind(kind).takes_timestep else ["x"]


class _KindForward(nn.Module):
    """The model with its kind's positional convention, so export sees plain tensors only."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return forward(self.model, self.kind, x, t)


def require_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise EngineUnavailable(
            "ONNX export needs the onnx package: pip install 'diffmamba-service[onnx]'"
        ) from exc
    return onnx


def export_onnx(
    model: nn.Module,
    kind: str,
    tile: int,
    path: str | Path,
    *,
    metadata: Mapping[str, str],
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``path`` (atomically) and check it with ``onnx.checker``.

    ``metadata`` (checkpoint_sha256, max_batch, ...) goes into the model's metadata_props
    together with tile, opset, kind and ENGINE_VERSION.
    """
    onnx = require_onnx()
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    device = next(model.parameters()).device
    # Batch 2 so that no size-1 dimension is specialised into the graph.
    x, t = warmup_inputs(kind, tile, batch=2)
    args = (x.to(device),) if t is None else (x.to(device), t.to(device))
    names = input_names(kind)
    dynamic = {name: {0: "batch"} for name in [*names, OUTPUT_NAME]}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes
            torch.onnx.export(
                _KindForward(model, kind).eval(), args, str(tmp), input_names=names,
                output_names=[OUTPUT_NAME], dynamic_axes=dynamic, opset_version=opset,
                dynamo=False, do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        props = {**{k: str(v) for k, v in metadata.items()}, "tile": str(tile),
                 "opset": str(opset), "kind": model_kind(kind).name,
                 "engine_version": ENGINE_VERSION}
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, EngineError):
            raise
        raise EngineError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX file; raises (any exception) when the file is not ONNX."""
    onnx = require_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
