"""One-pass restoration (VmambaIR, its ×4 SR nets) of whole images or of blended tiles.

Why whole images by default: VmambaIR's channel branch adds a per-channel term computed from
the feature map *pooled over the whole image*, and its spatial scans span the whole image, so a
tile sees different statistics than the full image and tiled output differs from whole-image
output (measured in the README). Whole images are therefore run up to a pixel budget and only
larger ones are tiled, for bounded memory. The input is reflect-padded bottom/right to the
kind's pad multiple (the releases' test pipeline) and the output cropped back to scale × the
input. Tiles are cut from the padded input on the same grid as diffusion's, run once, and
blended on an output canvas ``scale`` times the input with the same raised-cosine weights
stretched to the output's overlap, so seams fade over the overlap at either resolution.

Like ``TiledRestoration`` this never calls the network: the caller runs ``round_inputs()``
through a model (the service's batcher, or ``service.restoration.run_session``) and hands the
outputs to ``advance``, or streams them tile by tile (``tile_input`` / ``accept`` /
``finish_round``). The state is compact (service.tiling.state): the input as uint8 when it came
from 8-bit pixels, one float32 output accumulator with separable weight sums, normalised in
place; a whole image's output is kept as the network returned it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from service.models.kinds import SINGLE_PASS, SUPER_RESOLUTION, ModelKind
from service.tiling.blend import ramp_sides, tile_weight
from service.tiling.grid import TileSpec, tile_grid
from service.tiling.state import (
    as_float_image,
    compact_image,
    normalize_in_place,
    pad_like_network,
    weight_sums,
)

NO_TIMESTEP = 0.0
"""What one-pass items carry through the batcher, which groups (x, t) pairs; the engine drops
it for kinds that take no timestep."""


def _scaled(spec: TileSpec, scale: int) -> TileSpec:
    return TileSpec(spec.y0 * scale, spec.x0 * scale, spec.y1 * scale, spec.x1 * scale)


class SinglePassRestoration:
    """Restore one (1, 3, H, W) image in [0, 1] (float, or uint8 meaning ``k / 255``): whole
    (``tile=None``) or in tiles, one round.

    The result is (1, 3, sH, sW), s = ``kind.scale``.
    """

    def __init__(self, image: torch.Tensor, tile: int | None = None, overlap: int = 32,
                 kind: ModelKind = SINGLE_PASS) -> None:
        if kind.takes_timestep:
            raise ValueError(f"{kind.name} models are sampled, not run in one pass")
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
        self.kind = kind
        self.scale = kind.scale
        self.seed: int | None = None
        self.height, self.width = (int(s) for s in image.shape[-2:])
        self.overlap = overlap
        self._image = pad_like_network(compact_image(image), kind.pad_multiple)
        ph, pw = (int(s) for s in self._image.shape[-2:])
        self.tiles: list[TileSpec]
        self._weights: list[torch.Tensor | None]
        if tile is None:
            self.tiles = [TileSpec(0, 0, ph, pw)]
            self._weights = [None]
        else:
            s = self.scale
            self.tiles = tile_grid(self.height, self.width, tile, overlap, kind.pad_multiple)
            self._weights = [
                tile_weight(t.height * s, t.width * s, ramp_sides(t, ph, pw), overlap * s)
                for t in self.tiles
            ]
            self._wy, self._wx = weight_sums(self.tiles, ph, pw, overlap, s)
        self._acc: torch.Tensor | None = None
        self._accepted = 0
        self._result: torch.Tensor | None = None

    @property
    def num_tiles(self) -> int:
        return len(self.tiles)

    @property
    def rounds(self) -> int:
        return 1

    @property
    def whole(self) -> bool:
        return self._weights == [None]

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def round_timestep(self) -> float:
        return NO_TIMESTEP

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of every tile's network input."""
        return 3, self.tiles[0].height, self.tiles[0].width

    def state_bytes(self) -> int:
        """Bytes the whole-image state holds now (input, accumulator or result)."""
        tensors = [self._image, self._acc, self._result]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def tile_input(self, index: int) -> torch.Tensor:
        """Tile ``index``'s network input (3, h, w) float32 on the CPU."""
        ys, xs = self.tiles[index].slices
        return as_float_image(self._image[:, ys, xs])

    def inputs(self) -> list[torch.Tensor]:
        """The network input per tile, (3, h, w) on the CPU; every tile has one shape."""
        return [self.tile_input(i) for i in range(len(self.tiles))]

    def round_inputs(self) -> tuple[list[torch.Tensor], list[float]]:
        if self.done:
            raise RuntimeError("the pass is done; call result()")
        inputs = self.inputs()
        return inputs, [NO_TIMESTEP] * len(inputs)

    def accept(self, index: int, out: torch.Tensor) -> None:
        """Add tile ``index``'s output to the restored image (each tile once)."""
        if self.done:
            raise RuntimeError("the pass is done; call result()")
        spec, s = self.tiles[index], self.scale
        out = out.detach().to("cpu", torch.float32)
        if out.dim() == 4 and out.shape[0] == 1:
            out = out[0]
        expected = (3, spec.height * s, spec.width * s)
        if tuple(out.shape) != expected:
            raise ValueError(f"output shape {tuple(out.shape)} != {expected}")
        weight = self._weights[index]
        if weight is None:  # the whole image: the network's output is the result
            if out.is_inference() or (
                    out.untyped_storage().nbytes() > out.numel() * out.element_size()):
                # A row of a shared batch (do not keep the batch alive), or made under
                # inference mode (it is clamped in place later): a tensor of its own.
                out = out.clone()
            self._acc = out
        else:
            if self._acc is None:
                self._acc = torch.zeros(3, *(d * s for d in self._image.shape[-2:]))
            ys, xs = _scaled(spec, s).slices
            self._acc[:, ys, xs].addcmul_(weight, out)
        self._accepted += 1

    def finish_round(self) -> None:
        """Every output is in: normalise the blend (in place), crop to scale × the input."""
        if self.done:
            raise RuntimeError("the pass is done; call result()")
        if self._accepted != len(self.tiles) or self._acc is None:
            raise ValueError(f"expected {len(self.tiles)} outputs, got {self._accepted}")
        acc = self._acc if self.whole else normalize_in_place(self._acc, self._wy, self._wx)
        s = self.scale
        self._result = acc[None, :, : self.height * s, : self.width * s].clamp_(0, 1)
        self._acc = None
        self._image = self._image[:, :0]  # the input is not needed any more

    def advance(self, outputs: Sequence[torch.Tensor] | torch.Tensor) -> None:
        """Blend the outputs (in ``tiles`` order) into the restored image."""
        if self.done:
            raise RuntimeError("the pass is done; call result()")
        if len(outputs) != len(self.tiles):
            raise ValueError(f"expected {len(self.tiles)} outputs, got {len(outputs)}")
        for i, out in enumerate(outputs):
            try:
                self.accept(i, out)
            except ValueError:
                self._accepted, self._acc = 0, None
                raise
        self.finish_round()

    def result(self) -> torch.Tensor:
        """The restored (1, 3, sH, sW) image in [0, 1]."""
        if self._result is None:
            raise RuntimeError("the pass has not run yet")
        return self._result


class ScaledSinglePassRestoration(SinglePassRestoration):
    """The ×s one-pass session (super-resolution): input tiles, an output canvas s times larger,
    overlaps blended at the output's resolution."""

    def __init__(self, image: torch.Tensor, tile: int | None = None, overlap: int = 32,
                 kind: ModelKind = SUPER_RESOLUTION) -> None:
        if kind.scale < 2:
            raise ValueError(f"{kind.name} has scale {kind.scale}: use SinglePassRestoration")
        super().__init__(image, tile=tile, overlap=overlap, kind=kind)
