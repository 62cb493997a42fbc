"""The warm-up tile: one deterministic, image-like input every engine is warmed and checked on.

Why image-like and fixed: the precision check compares a reduced-precision pass with fp32 on this
tile, so it should look like what the service sees (a smooth picture with some texture and
noise, and for diffusion a noisy x_t at a mid timestep), and be the same on every start-up.
"""

from __future__ import annotations

import torch

from service.engines.base import DIFFUSION, WARMUP_T, input_channels


def warmup_image(size: int, seed: int = 0) -> torch.Tensor:
    """(3, size, size) in [0, 1]: gradients, a ripple and a little noise."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    image = torch.stack([xx, yy, 0.5 + 0.25 * torch.sin(12 * (xx + yy))])
    return (image + 0.05 * torch.randn(3, size, size, generator=g)).clamp(0, 1)


def warmup_inputs(
    kind: str, size: int, batch: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x (batch, C, size, size), t (batch,) or None for single-pass models), CPU float32."""
    input_channels(kind)
    image = warmup_image(size, seed)
    if kind != DIFFUSION:
        return image[None].repeat(batch, 1, 1, 1), None
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.cat([2 * image - 1, torch.randn(3, size, size, generator=g)])
    return x[None].repeat(batch, 1, 1, 1), torch.full((batch,), WARMUP_T)
