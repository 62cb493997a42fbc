"""Tiled diffusion sampling: bounded memory for large images, tiles batchable across requests.

``tile_grid`` places equal-size overlapping tiles, ``blend`` weights them smoothly,
``TiledRestoration`` is the network-agnostic sampler state machine and ``restore_tiled`` its
synchronous driver.
"""

from service.tiling.blend import Canvas, RampSides, ramp_sides, tile_weight
from service.tiling.driver import restore_tiled
from service.tiling.grid import TileSpec, tile_grid
from service.tiling.session import TiledRestoration

__all__ = [
    "Canvas",
    "RampSides",
    "TileSpec",
    "TiledRestoration",
    "ramp_sides",
    "restore_tiled",
    "tile_grid",
    "tile_weight",
]
