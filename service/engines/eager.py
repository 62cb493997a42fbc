"""The eager torch engine: the model as loaded, on its device, optionally under autocast.

It is also every static engine's fallback for shapes they were not built for, so it has to be
cheap to keep around: it shares the loaded model, nothing is copied.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from service.engines.base import Engine
from service.engines.mixers import keep_mixers_fp32
from service.engines.precision import DTYPES, autocast
from service.engines.warmup import warmup_inputs
from service.models.kinds import model_kind
from service.thread_governor import govern_pass

WARMUP_SIZE = 32


def forward(model: nn.Module, kind: str, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    """One pass with the argument convention of the model's kind."""
    return model_kind(kind).forward(model, x, t)


class TorchEngine(Engine):
    """Eager torch. ``precision`` bf16/fp16 means autocast (CUDA; bf16 also on the CPU) with the
    scan mixers in fp32."""

    name = "torch"

    def __init__(self, model: nn.Module, kind: str, device: torch.device,
                 precision: str = "fp32") -> None:
        super().__init__(kind)
        if precision not in DTYPES:
            raise ValueError(f"unknown precision {precision!r}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA device (got {device})")
        if precision == "bf16" and device.type not in ("cuda", "cpu"):
            raise ValueError(f"precision bf16 needs a CPU or CUDA device (got {device})")
        self.model, self.device, self.precision = model, device, precision
        if precision != "fp32":
            keep_mixers_fp32(model)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.precision, self.device)

    def forward_device(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        """The pass on device tensors (no copies): what CUDA graphs capture."""
        with self.autocast():
            return forward(self.model, self.kind, x, t)

    def run(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        t = self._check_t(x, t)
        if self.device.type == "cpu":
            govern_pass()
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            t = None if t is None else t.to(self.device)
            return self.forward_device(x, t).float().cpu()

    def warm_up(self) -> None:
        self.run(*warmup_inputs(self.kind, WARMUP_SIZE))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision}
