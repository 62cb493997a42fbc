"""Tiled diffusion sampling: bounded memory for large images, tiles batchable across requests.

``tile_grid`` places equal-size overlapping tiles, ``blend`` weights them smoothly,
``TiledRestoration`` is the network-agnostic sampler state machine and ``restore_tiled`` its
synchronous driver; ``SinglePassRestoration`` / ``run_single_pass`` do the same for single-pass
models (one pass per tile, or the whole image), ``ScaledSinglePassRestoration`` for ×s outputs.
"""

from service.tiling.blend import Canvas, RampSides, ramp_sides, tile_weight
from service.tiling.driver import restore_tiled, run_single_pass
from service.tiling.grid import TileSpec, tile_grid
from service.tiling.session import TiledRestoration
from service.tiling.single_pass import (
    ScaledSinglePassRestoration,
    SinglePassRestoration,
)

__all__ = [
    "Canvas",
    "RampSides",
    "ScaledSinglePassRestoration",
    "SinglePassRestoration",
    "TileSpec",
    "TiledRestoration",
    "ramp_sides",
    "restore_tiled",
    "run_single_pass",
    "tile_grid",
    "tile_weight",
]
