"""A served task: its network on a device, the batched pass the batcher calls, and warm-up.

The pass itself belongs to the task's engine (service.engines: eager torch, compile, ONNX
Runtime, TensorRT); the task only says which model, which engine and which defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from service.batching import DynamicBatcher
from service.engines import Engine, EngineOptions, TorchEngine, build_engine
from service.models import LoadedModel, load_checkpoint
from service.models.kinds import ModelKind
from service.runtime.discovery import TaskCheckpoint


@dataclass
class TaskModel:
    name: str
    loaded: LoadedModel
    device: torch.device
    default_steps: int
    card: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0
    batcher: DynamicBatcher | None = None
    engine: Engine | None = None  # None: eager torch on ``device``

    def __post_init__(self) -> None:
        if self.engine is None:
            self.engine = TorchEngine(self.loaded.model, self.loaded.kind, self.device)

    @property
    def kind(self) -> ModelKind:
        return self.loaded.kind

    def run_batch(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The batcher's blocking call (worker thread): CPU tiles in, CPU outputs back.

        Only the tiles of this batch ever reach the device, never a whole image.
        """
        assert self.engine is not None
        return self.engine.run(x, t if self.kind.takes_timestep else None)

    def warm_up(self) -> None:
        """Build-time work the engine defers (compilation, graph capture, first allocations)
        happens here, before /readyz says ready."""
        assert self.engine is not None
        self.engine.warm_up()

    def describe(self) -> dict[str, Any]:
        config = self.loaded.config.to_dict()
        return {
            "task": self.name,
            "arch": self.loaded.arch,
            "kind": self.kind.name,
            "config": config,
            "parameters": self.loaded.num_params,
            "sha256": self.loaded.sha256,
            "scale": self.kind.scale,
            "default_steps": self.default_steps if self.kind.takes_timestep else None,
            "steps_ignored": not self.kind.takes_timestep,
            "device": str(self.device),
            "engine": self.engine.describe() if self.engine is not None else None,
            "card": self.card,
        }


def load_task(entry: TaskCheckpoint, device: torch.device, default_steps: int,
              warm: bool = True, engine: EngineOptions | None = None) -> TaskModel:
    """Load, build the engine (``engine`` options; None: eager torch) and warm it."""
    start = time.perf_counter()
    loaded = load_checkpoint(entry.path, device=device)
    steps = int(entry.card.get("default_steps", default_steps))
    runner = None if engine is None else build_engine(loaded, device, engine, entry.path,
                                                      label=f"task {entry.task}")
    task = TaskModel(entry.task, loaded, device, steps, entry.card, engine=runner)
    if warm:
        task.warm_up()
    task.load_seconds = time.perf_counter() - start
    return task
