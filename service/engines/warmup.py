"""The warm-up tile: one deterministic, image-like input every engine is warmed and checked on.

Why image-like and fixed: the precision check compares a reduced-precision pass with fp32 on this
tile, so it should look like what the service sees (a smooth picture with some texture and
noise, and for diffusion a noisy x_t at a mid timestep), and be the same on every start-up. The
kind declares the inputs (service.models.kinds); this is the engines' name for them.
"""

from __future__ import annotations

import torch

from service.models.kinds import model_kind, warmup_image

__all__ = ["warmup_image", "warmup_inputs"]


def warmup_inputs(
    kind: str, size: int, batch: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x (batch, C, size, size), t (batch,) or None for one-pass kinds), CPU float32."""
    return model_kind(kind).warmup_inputs(size, batch, seed)
