"""Engines for the deterministic network pass: eager torch (with CUDA graphs and autocast on a
GPU), torch.compile, ONNX Runtime and TensorRT, built or loaded from a cache at start-up.

``build_engine`` picks one from ``EngineOptions`` (``DIFFMAMBA_ENGINE`` /
``DIFFMAMBA_TASK_ENGINES``); every engine answers ``run(x, t)`` on CPU tensors like the eager
pass, so the batcher and the sampler do not know which one runs.
"""

from service.engines.base import (
    ENGINE_VERSION,
    Engine,
    EngineError,
    EngineUnavailable,
    StaticEngine,
)
from service.engines.eager import TorchEngine
from service.engines.factory import build_engine
from service.engines.options import ENGINES, EngineOptions
from service.engines.precision import MIN_PSNR_DB, PrecisionDecision, decide_precision, psnr_db

__all__ = [
    "ENGINES",
    "ENGINE_VERSION",
    "MIN_PSNR_DB",
    "Engine",
    "EngineError",
    "EngineOptions",
    "EngineUnavailable",
    "PrecisionDecision",
    "StaticEngine",
    "TorchEngine",
    "build_engine",
    "decide_precision",
    "psnr_db",
]
