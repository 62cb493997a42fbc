"""ONNX Runtime on the exported graph, with the best execution provider this machine has.

Provider order: TensorRT, CUDA, CPU — the first that onnxruntime reports as available (a GPU
build of onnxruntime lists TensorRT/CUDA even where their libraries fail to load; onnxruntime
then falls back to the next provider itself and the session's providers say what runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.engines.base import Engine, EngineUnavailable, StaticEngine, logger
from service.engines.onnx_export import OUTPUT_NAME
from service.models.kinds import model_kind

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineUnavailable(
            "engine onnxruntime needs the onnxruntime package: "
            "pip install 'diffmamba-service[onnx]'"
        ) from exc
    return onnxruntime


def choose_providers(available: list[str], tile: int, max_batch: int, kind: str,
                     cache_dir: Path | None = None) -> list[Any]:
    """Providers in PROVIDER_ORDER that are available, TensorRT with a profile for 1..max."""
    chosen: list[Any] = []
    for name in PROVIDER_ORDER:
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider":
            spec = model_kind(kind)
            shapes = {b: f"x:{b}x{spec.input_channels}x{tile}x{tile}"
                      + (f",t:{b}" if spec.takes_timestep else "") for b in (1, max_batch)}
            options: dict[str, Any] = {
                "trt_profile_min_shapes": shapes[1],
                "trt_profile_opt_shapes": shapes[max_batch],
                "trt_profile_max_shapes": shapes[max_batch],
            }
            if cache_dir is not None:
                options |= {"trt_engine_cache_enable": True,
                            "trt_engine_cache_path": str(cache_dir)}
            chosen.append((name, options))
        else:
            chosen.append(name)
    return chosen


class OnnxRuntimeEngine(StaticEngine):
    name = "onnxruntime"

    def __init__(self, path: Path, kind: str, tile: int, max_batch: int, fallback: Engine,
                 threads: int | None = None) -> None:
        super().__init__(kind, tile, max_batch, fallback)
        ort = require_onnxruntime()
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = choose_providers(ort.get_available_providers(), tile, max_batch, kind,
                                     self.path.parent)
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.providers = list(self.session.get_providers())
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        logger.info("onnxruntime engine %s on %s", self.path.name, ", ".join(self.providers))

    def _run_static(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        feed = {"x": x.numpy()}
        if t is not None:
            feed["t"] = t.to(torch.float32).contiguous().numpy()
        (out,) = self.session.run([OUTPUT_NAME], feed)
        return torch.from_numpy(np.ascontiguousarray(out))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": str(self.path), "providers": self.providers}
