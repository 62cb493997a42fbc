"""Which engine a task runs with, and the sizes it is built for, from the service settings.

Per-task choice: ``DIFFMAMBA_TASK_ENGINES`` (JSON, e.g. ``{"denoise": "onnxruntime"}``) over
``DIFFMAMBA_ENGINE``, and ``DIFFMAMBA_TASK_PRECISIONS`` over ``DIFFMAMBA_PRECISION``. A setting,
not the model card, because the engine is a property of the machine a deployment runs on
(TensorRT needs a GPU, bf16 needs a CPU or GPU that has it), while a card travels with the
checkpoint from machine to machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.engines.onnx_export import DEFAULT_OPSET

if TYPE_CHECKING:
    from service.settings import Settings

ENGINES = ("torch", "compile", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class EngineOptions:
    engine: str = "torch"
    precision: str = "auto"
    tile: int = 256
    max_batch: int = 8
    cache_dir: Path | None = None
    cuda_graphs: bool = True
    opset: int = DEFAULT_OPSET

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.tile < 8 or self.tile % 8:
            raise ValueError(f"tile must be a positive multiple of 8, got {self.tile}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    @classmethod
    def for_task(cls, settings: Settings, task: str, device: object = "cpu") -> EngineOptions:
        from service.settings import max_batch_for

        return cls(
            engine=settings.task_engines.get(task, settings.engine),
            precision=settings.task_precisions.get(task, settings.precision),
            tile=settings.tile_size,
            max_batch=max_batch_for(settings, device),
            cache_dir=settings.engine_cache_dir,
            cuda_graphs=settings.cuda_graphs,
        )
