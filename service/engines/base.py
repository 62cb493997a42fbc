"""What every engine is to the service: a blocking ``run(x, t)`` on CPU tensors, plus warm-up.

Why one small interface: the batcher calls ``TaskModel.run_batch`` in a worker thread and must not
care whether the pass is eager torch, a compiled graph, ONNX Runtime or a TensorRT plan. Engines
with a static input shape (exported or captured for one tile size) wrap an eager engine and hand
it every other shape, so results never depend on which path a tile took (see ``StaticEngine``).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import Any

import torch

from service.models.kinds import WARMUP_T, ModelKind, model_kind

__all__ = ["WARMUP_T", "Engine", "EngineError", "EngineUnavailable", "StaticEngine",
           "input_channels", "pad_batch", "padded_batch_sizes"]

logger = logging.getLogger("service.engines")

ENGINE_VERSION = "1"
"""Bump when exported graphs change meaning (inputs, outputs, scan form): cached files whose
metadata carry another version are rebuilt."""

def padded_batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, … below max_batch, then max_batch: the batch sizes a static-shape engine builds
    for, each batch padded up to the next one (at most 2× padding, few builds)."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """x with zero rows appended up to `size` rows (their outputs are dropped)."""
    if x.shape[0] >= size:
        return x
    return torch.cat([x, x.new_zeros(size - x.shape[0], *x.shape[1:])])


class EngineError(RuntimeError):
    """An engine could not be built, loaded or run (the message says which and why)."""


class EngineUnavailable(EngineError):
    """The engine needs something this machine lacks (CUDA, tensorrt, onnxruntime)."""


def input_channels(kind: str) -> int:
    """Channels of the network input the kind declares (an unknown name is an error)."""
    return model_kind(kind).input_channels


class Engine(ABC):
    """``run(x (B, C, H, W) float32 CPU, t (B,) or None) -> (B, 3, sH, sW) float32 CPU``,
    s the kind's scale."""

    name: str = "engine"

    def __init__(self, kind: str) -> None:
        self.kind: ModelKind = model_kind(kind)

    @abstractmethod
    def run(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor: ...

    @abstractmethod
    def warm_up(self) -> None:
        """Make the first request as fast as the next: compile, capture, allocate now."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def _check_t(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor | None:
        if not self.kind.takes_timestep:
            return None
        if t is None:
            raise ValueError(f"a {self.kind.name} engine needs timesteps t")
        return torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(x.shape[0])


class StaticEngine(Engine):
    """An engine built for one input shape (C, tile, tile) and batches up to ``max_batch``.

    Other shapes (images smaller than a tile: the tile grid then uses the padded image size) go
    to ``fallback``, the eager engine, rather than being padded to the tile: the scans run over
    the whole tile, so padded pixels would flow into the real ones and change the output. Bigger
    batches run in chunks of ``max_batch``; a subclass that supports only some batch sizes pads
    inside ``_run_static``.
    """

    def __init__(self, kind: str, tile: int, max_batch: int, fallback: Engine) -> None:
        super().__init__(kind)
        if tile < 1 or max_batch < 1:
            raise ValueError(f"tile and max_batch must be positive, got {tile}, {max_batch}")
        self.tile, self.max_batch, self.fallback = tile, max_batch, fallback
        self.input_shape = (self.kind.input_channels, tile, tile)
        self._lock = threading.Lock()
        self._fallback_shapes: set[tuple[int, ...]] = set()
        self.stats = {"static_batches": 0, "fallback_batches": 0}

    @abstractmethod
    def _run_static(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        """x: (b ≤ max_batch, *input_shape) float32 CPU -> output float32 CPU."""

    def supports(self, x: torch.Tensor) -> bool:
        return tuple(x.shape[1:]) == self.input_shape

    def run(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        t = self._check_t(x, t)
        if not self.supports(x):
            self._note_fallback(tuple(x.shape[1:]))
            return self.fallback.run(x, t)
        x = x.to(torch.float32).contiguous()
        with self._lock:
            self.stats["static_batches"] += 1
            outs = [
                self._run_static(x[i : i + self.max_batch],
                                 None if t is None else t[i : i + self.max_batch])
                for i in range(0, x.shape[0], self.max_batch)
            ]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _note_fallback(self, shape: tuple[int, ...]) -> None:
        self.stats["fallback_batches"] += 1
        if shape not in self._fallback_shapes:
            self._fallback_shapes.add(shape)
            logger.info("%s engine is built for %s; input %s runs on %s", self.name,
                        self.input_shape, shape, self.fallback.name)

    def warm_inputs(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.kind.warmup_inputs(self.tile, batch)

    def warm_up(self) -> None:
        self.fallback.warm_up()
        self.run(*self.warm_inputs())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "tile": self.tile, "max_batch": self.max_batch,
                "fallback": self.fallback.name, **self.stats}
