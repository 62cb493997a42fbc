"""Where the tiles go: an overlapping grid of equally sized tiles over the (padded) image.

Every tile has the same shape so a compiled engine (ONNX/TensorRT, CUDA graphs) sees one static
input shape and tiles from different requests can share a batch. The last row and column are
shifted back to end at the border instead of being cropped, which only ever increases overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.nn.resample import MULTIPLE


@dataclass(frozen=True)
class TileSpec:
    """A tile's half-open pixel box ``[y0, y1) x [x0, x1)`` in the padded image."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        """Index the last two dims: ``image[..., spec.slices[0], spec.slices[1]]``."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def padded_size(size: int, multiple: int = MULTIPLE) -> int:
    """The size ``pad_to_multiple`` gives a dimension: the network needs multiples of 8."""
    return -(-int(size) // multiple) * multiple


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one dimension of ``size`` (already padded) for tiles of ``tile``."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)  # shifted back to end at the border: full size, more overlap
    return sorted(set(starts))


def validate_tiling(tile: int, overlap: int) -> None:
    """Clear errors for tile/overlap values the network or the blending cannot use."""
    for name, value in (("tile", tile), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
        if value % MULTIPLE:
            raise ValueError(f"{name} must be a multiple of {MULTIPLE}, got {value}")
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than tile ({tile})")


def tile_grid(height: int, width: int, tile: int = 256, overlap: int = 32,
              multiple: int = MULTIPLE) -> list[TileSpec]:
    """Tiles covering a ``height`` x ``width`` image once padded to ``multiple``.

    Tiles are ``tile`` x ``tile`` (or the padded image's size in a dimension smaller than a
    tile), neighbours overlap by at least ``overlap``, row-major order, no duplicates.
    """
    validate_tiling(tile, overlap)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    ph, pw = padded_size(height, multiple), padded_size(width, multiple)
    th, tw = min(tile, ph), min(tile, pw)
    return [
        TileSpec(y0, x0, y0 + th, x0 + tw)
        for y0 in tile_starts(ph, tile, overlap)
        for x0 in tile_starts(pw, tile, overlap)
    ]
