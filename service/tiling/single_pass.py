"""Single-pass restoration (VmambaIR) of whole images or of blended tiles: one pass per tile.

Why whole images by default: VmambaIR's channel branch adds a per-channel term computed from
the feature map *pooled over the whole image*, and its spatial scans span the whole image, so a
tile sees different statistics than the full image and tiled output differs from whole-image
output (measured in the README). Whole images are therefore run up to a pixel budget
(``whole_image_max_pixels``) and only larger ones are tiled, for bounded memory. Tiles are cut
from the reflect-padded image on the same grid as diffusion's, run once, and blended with the
same raised-cosine weights, so seams fade over the overlap.

Like ``TiledRestoration`` this never calls the network: the caller runs ``inputs()`` through a
model (the service's batcher, or `run_single_pass` below) and hands the outputs to ``result``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from service.nn.resample import pad_to_multiple
from service.tiling.blend import Canvas, ramp_sides, tile_weight
from service.tiling.grid import TileSpec, tile_grid


def fits_whole(height: int, width: int, max_pixels: int) -> bool:
    """Whether an image is run in one pass rather than tiled."""
    return height * width <= max_pixels


class SinglePassRestoration:
    """Restore one (1, 3, H, W) image in [0, 1]: whole (``tile=None``) or in tiles."""

    def __init__(self, image: torch.Tensor, tile: int | None = None, overlap: int = 32) -> None:
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
        image = image.detach().to("cpu", torch.float32)
        self.height, self.width = (int(s) for s in image.shape[-2:])
        self.overlap = overlap
        self.tiles: list[TileSpec]
        self._weights: list[torch.Tensor | None]
        if tile is None:
            # The network pads to a multiple of 8 itself and crops back.
            self._image = image[0]
            self.tiles = [TileSpec(0, 0, self.height, self.width)]
            self._weights = [None]
        else:
            self._image = pad_to_multiple(image)[0]
            ph, pw = (int(s) for s in self._image.shape[-2:])
            self.tiles = tile_grid(self.height, self.width, tile, overlap)
            self._weights = [
                tile_weight(s.height, s.width, ramp_sides(s, ph, pw), overlap)
                for s in self.tiles
            ]

    @property
    def num_tiles(self) -> int:
        return len(self.tiles)

    @property
    def whole(self) -> bool:
        return self._weights == [None]

    def inputs(self) -> list[torch.Tensor]:
        """The network input per tile, (3, h, w) on the CPU; every tile has one shape."""
        return [self._image[:, s.slices[0], s.slices[1]] for s in self.tiles]

    def result(self, outputs: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The restored (1, 3, H, W) image in [0, 1] from the outputs (in ``tiles`` order)."""
        if len(outputs) != len(self.tiles):
            raise ValueError(f"expected {len(self.tiles)} outputs, got {len(outputs)}")
        canvas = Canvas(3, *self._image.shape[-2:])
        for spec, weight, out in zip(self.tiles, self._weights, outputs, strict=True):
            out = out.detach().to("cpu", torch.float32)
            if out.dim() == 4 and out.shape[0] == 1:
                out = out[0]
            expected = (3, spec.height, spec.width)
            if tuple(out.shape) != expected:
                raise ValueError(f"output shape {tuple(out.shape)} != {expected}")
            canvas.add(spec, out, weight)
        restored = canvas.result()[None, :, : self.height, : self.width]
        return restored.clamp(0, 1)


def run_single_pass(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int | None = None,
    overlap: int = 32,
    max_batch: int = 8,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Synchronous driver (CLI, benchmarks, tests): (1, 3, H, W) -> restored, on the CPU."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    session = SinglePassRestoration(image, tile=tile, overlap=overlap)
    inputs = session.inputs()
    outputs: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(inputs), max_batch):
            batch = torch.stack(inputs[start : start + max_batch]).to(device)
            outputs.extend(model(batch).float().cpu().unbind(0))
        result = session.result(outputs)
    return result.clone()  # a normal tensor, usable outside inference mode
