"""Compact whole-image state for tiled sessions: 8-bit images, separable blend weights, strips.

Why: a session's whole-image buffers are what grows with the image (a 4096² float32 RGB plane is
201 MB), so each is kept at the smallest exact size and never copied whole:

* an image decoded from 8-bit data is exactly ``k / 255``; it is kept as uint8 and turned into
  float32 tile by tile with the same division the decoder used, so the network sees bit-identical
  inputs at a quarter of the memory;
* the blend weights of a tile grid are separable: every tile's weight is ``ramp_y ⊗ ramp_x``
  and the grid is rows × columns, so the weight sum over all tiles is ``WY ⊗ WX`` and two 1-D
  vectors replace a whole-image weight plane;
* whole-image arithmetic (normalising a canvas, a DDIM step) runs in row strips, in place, so
  its temporaries are a strip, not an image.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from service.tiling.blend import _ramp
from service.tiling.grid import TileSpec, tile_starts

STRIP_ELEMENTS = 1 << 20
"""Elements per strip of whole-image arithmetic (4 MB per float32 temporary)."""


def row_strips(channels: int, height: int, width: int) -> Iterator[slice]:
    """Row ranges covering ``height`` with about ``STRIP_ELEMENTS`` elements each."""
    rows = max(1, STRIP_ELEMENTS // max(1, channels * width))
    for start in range(0, height, rows):
        yield slice(start, min(height, start + rows))


def _pad_index(size: int, pad: int, mode: str) -> torch.Tensor:
    """Source indices of a dimension padded at its end by ``pad`` (reflect or replicate)."""
    idx = torch.arange(size + pad)
    if pad:
        tail = torch.arange(1, pad + 1)
        idx[size:] = size - 1 - tail if mode == "reflect" else size - 1
    return idx


def pad_like_network(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(C, H, W) of any dtype padded bottom/right exactly as ``pad_to_multiple`` pads float
    images (reflect, or replicate where the image is too small to reflect), by indexing, so
    uint8 images pad without a float copy."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    rows, cols = _pad_index(h, ph, mode), _pad_index(w, pw, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


def as_float_image(tile: torch.Tensor) -> torch.Tensor:
    """A new float32 tensor in [0, 1] from a tile of a stored image (uint8 means ``k / 255``);
    always a copy, so the caller may modify it in place."""
    if tile.dtype == torch.uint8:
        return tile.to(torch.float32).div_(255.0)
    return tile.to(torch.float32, copy=True)


def compact_image(image: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) -> (3, H, W) storage: uint8 images stay uint8, others float32 CPU."""
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
    image = image.detach()[0]
    if image.dtype == torch.uint8:
        return image.cpu()
    return image.to("cpu", torch.float32)


def weight_sums(tiles: list[TileSpec], height: int, width: int, overlap: int,
                scale: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(WY (H·s,), WX (W·s,)) float32 with ``WY ⊗ WX`` = the sum of every tile's blend weight.

    ``height``/``width`` are the padded input's, the grid's; weights live at ``scale`` × it with
    ``overlap × scale`` ramps (the ×s output canvas), as ``tile_weight`` builds them.
    """
    th, tw = tiles[0].height, tiles[0].width
    wy = torch.zeros(height * scale, dtype=torch.float64)
    wx = torch.zeros(width * scale, dtype=torch.float64)
    for y0 in tile_starts(height, th, overlap):
        ramp = _ramp(th * scale, overlap * scale, y0 > 0, y0 + th < height)
        wy[y0 * scale:(y0 + th) * scale] += ramp
    for x0 in tile_starts(width, tw, overlap):
        ramp = _ramp(tw * scale, overlap * scale, x0 > 0, x0 + tw < width)
        wx[x0 * scale:(x0 + tw) * scale] += ramp
    return wy.float(), wx.float()


def normalize_in_place(acc: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """``acc / (WY ⊗ WX)`` in place, strip by strip; raises if a pixel has no weight."""
    if bool((wy <= 0).any()) or bool((wx <= 0).any()):
        raise RuntimeError("canvas has pixels no tile covered")
    channels, height, width = acc.shape
    for rows in row_strips(channels, height, width):
        acc[:, rows].div_(wy[rows, None] * wx[None, :])
    return acc
