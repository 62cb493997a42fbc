"""A served task: its network on a device, the batched pass the batcher calls, and warm-up."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from service.batching import DynamicBatcher
from service.models import LoadedModel, load_checkpoint
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

    @property
    def kind(self) -> str:
        return self.loaded.kind

    def run_batch(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The batcher's blocking call (worker thread): CPU tiles in, CPU outputs back.

        Only the tiles of this batch ever reach the device, never a whole image.
        """
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            if self.kind == "diffusion":
                out = self.loaded.model(x, t.to(self.device))
            else:
                out = self.loaded.model(x)
            return out.float().cpu()

    def warm_up(self, size: int = 32) -> None:
        """One pass so kernels compile and allocators settle before /readyz says ready."""
        channels = 6 if self.kind == "diffusion" else 3
        self.run_batch(torch.rand(1, channels, size, size), torch.tensor([500.0]))

    def describe(self) -> dict[str, Any]:
        config = self.loaded.config.to_dict()
        return {
            "task": self.name,
            "arch": self.loaded.arch,
            "kind": self.kind,
            "config": config,
            "parameters": self.loaded.num_params,
            "sha256": self.loaded.sha256,
            "default_steps": self.default_steps if self.kind == "diffusion" else None,
            "steps_ignored": self.kind != "diffusion",
            "device": str(self.device),
            "card": self.card,
        }


def load_task(entry: TaskCheckpoint, device: torch.device, default_steps: int,
              warm: bool = True) -> TaskModel:
    start = time.perf_counter()
    loaded = load_checkpoint(entry.path, device=device)
    steps = int(entry.card.get("default_steps", default_steps))
    task = TaskModel(entry.task, loaded, device, steps, entry.card)
    if warm:
        task.warm_up()
    task.load_seconds = time.perf_counter() - start
    return task
