"""Whole image or tiles, and which session: decided here for every front-end.

Diffusion always runs on the tile grid (an image within one tile is one tile, which equals the
whole-image sampler). One-pass kinds pool statistics over the whole image, so they run whole up
to a pixel budget (of input pixels) and tiled above it, or when a tile size is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from service.diffusion.sampler import DEFAULT_STEPS
from service.models.kinds import ModelKind
from service.restoration.protocol import RestorationSession
from service.tiling import ScaledSinglePassRestoration, SinglePassRestoration, TiledRestoration
from service.tiling.grid import validate_tiling

WHOLE_IMAGE_MAX_PIXELS = 512 * 512


@dataclass(frozen=True)
class TilingPolicy:
    tile: int = 256
    overlap: int = 32
    #: One-pass kinds run images up to this many input pixels whole.
    whole_max_pixels: int = WHOLE_IMAGE_MAX_PIXELS
    #: Tile one-pass images even under the budget (a client's explicit tile size).
    force_tiles: bool = False

    def __post_init__(self) -> None:
        validate_tiling(self.tile, self.overlap)
        if self.whole_max_pixels < 1:
            raise ValueError(f"whole_max_pixels must be positive, got {self.whole_max_pixels}")

    def tile_for(self, kind: ModelKind, height: int, width: int) -> int | None:
        """The tile size for an image of this kind, None for a whole-image pass."""
        if kind.takes_timestep or self.force_tiles:
            return self.tile
        return None if height * width <= self.whole_max_pixels else self.tile


def open_session(
    kind: ModelKind,
    image: torch.Tensor,
    policy: TilingPolicy | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int | None = None,
    x_T: torch.Tensor | None = None,
) -> RestorationSession:
    """The session for ``image`` (1, 3, H, W) in [0, 1]; ``steps``, ``seed`` and ``x_T`` only
    matter to kinds that take a timestep."""
    policy = policy or TilingPolicy()
    tile = policy.tile_for(kind, *image.shape[-2:])
    if kind.takes_timestep:
        assert tile is not None
        return TiledRestoration(image, steps=steps, seed=seed, x_T=x_T, tile=tile,
                                overlap=policy.overlap)
    if kind.scale > 1:
        return ScaledSinglePassRestoration(image, tile=tile, overlap=policy.overlap, kind=kind)
    return SinglePassRestoration(image, tile=tile, overlap=policy.overlap, kind=kind)
