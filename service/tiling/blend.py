"""Seam-free blending: smooth per-tile weights and a canvas that takes weighted averages.

Each tile's contribution fades from ~0 at an edge that lies inside the image to 1 over the
overlap width, so a pixel near one tile's edge (where that tile lacks context and the network
sees padding) is dominated by its neighbour's interior. Sides on the image border keep weight 1:
no other tile covers them, and down-weighting them would gain nothing. The raised-cosine ramps
of two neighbours overlapping by exactly ``overlap`` sum to 1 (sin² + cos²).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch

from service.tiling.grid import TileSpec


class RampSides(NamedTuple):
    """Which sides of a tile fade out (True where another tile lies beyond that side)."""

    top: bool
    bottom: bool
    left: bool
    right: bool


def ramp_sides(spec: TileSpec, height: int, width: int) -> RampSides:
    """Sides of ``spec`` strictly inside a ``height`` x ``width`` (padded) image."""
    return RampSides(spec.y0 > 0, spec.y1 < height, spec.x0 > 0, spec.x1 < width)


def _ramp(length: int, overlap: int, start: bool, end: bool) -> torch.Tensor:
    """1-D weights: raised cosine over ``overlap`` px at the chosen ends, 1 elsewhere."""
    w = torch.ones(length, dtype=torch.float64)
    n = min(overlap, length)
    if n > 0:
        # Sample at pixel centres: the smallest weight is sin²(π/4n) > 0, so no pixel is lost.
        pos = (torch.arange(n, dtype=torch.float64) + 0.5) / overlap
        up = torch.sin(pos * (math.pi / 2)) ** 2
        if start:
            w[:n] = torch.minimum(w[:n], up)
        if end:
            w[length - n :] = torch.minimum(w[length - n :], up.flip(0))
    return w


@lru_cache(maxsize=64)
def tile_weight(height: int, width: int, sides: RampSides, overlap: int) -> torch.Tensor:
    """Separable (1, height, width) float32 weights. Cached and shared: do not modify."""
    wy = _ramp(height, overlap, sides.top, sides.bottom)
    wx = _ramp(width, overlap, sides.left, sides.right)
    return (wy[:, None] * wx[None, :]).float().unsqueeze(0)


class Canvas:
    """Accumulates ``weight * value`` and ``weight`` over a whole (C, H, W) image on the CPU.

    The whole-image state of a large image stays in host memory; only tiles visit the device.
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        self.value_sum = torch.zeros(channels, height, width)
        self.weight_sum = torch.zeros(1, height, width)

    def add(self, spec: TileSpec, value: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add a (C, h, w) tile; ``weight`` (1, h, w) defaults to ones (plain averaging)."""
        ys, xs = spec.slices
        value = value.detach().to("cpu", torch.float32)
        if weight is None:
            self.value_sum[:, ys, xs] += value
            self.weight_sum[:, ys, xs] += 1
        else:
            self.value_sum[:, ys, xs] += weight * value
            self.weight_sum[:, ys, xs] += weight

    def result(self) -> torch.Tensor:
        """The weighted average (C, H, W); raises if some pixel was never covered."""
        if bool((self.weight_sum <= 0).any()):
            raise RuntimeError("canvas has pixels no tile covered")
        return self.value_sum / self.weight_sum
