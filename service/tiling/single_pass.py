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
outputs to ``advance``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from service.models.kinds import SINGLE_PASS, SUPER_RESOLUTION, ModelKind
from service.nn.resample import pad_to_multiple
from service.tiling.blend import Canvas, ramp_sides, tile_weight
from service.tiling.grid import TileSpec, tile_grid

NO_TIMESTEP = 0.0
"""What one-pass items carry through the batcher, which groups (x, t) pairs; the engine drops
it for kinds that take no timestep."""


def _scaled(spec: TileSpec, scale: int) -> TileSpec:
    return TileSpec(spec.y0 * scale, spec.x0 * scale, spec.y1 * scale, spec.x1 * scale)


class SinglePassRestoration:
    """Restore one (1, 3, H, W) image in [0, 1]: whole (``tile=None``) or in tiles, one round.

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
        image = image.detach().to("cpu", torch.float32)
        self.height, self.width = (int(s) for s in image.shape[-2:])
        self.overlap = overlap
        self._image = pad_to_multiple(image, kind.pad_multiple)[0]
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

    def inputs(self) -> list[torch.Tensor]:
        """The network input per tile, (3, h, w) on the CPU; every tile has one shape."""
        return [self._image[:, s.slices[0], s.slices[1]] for s in self.tiles]

    def round_inputs(self) -> tuple[list[torch.Tensor], list[float]]:
        if self.done:
            raise RuntimeError("the pass is done; call result()")
        inputs = self.inputs()
        return inputs, [NO_TIMESTEP] * len(inputs)

    def advance(self, outputs: Sequence[torch.Tensor] | torch.Tensor) -> None:
        """Blend the outputs (in ``tiles`` order) into the restored image."""
        if self.done:
            raise RuntimeError("the pass is done; call result()")
        if len(outputs) != len(self.tiles):
            raise ValueError(f"expected {len(self.tiles)} outputs, got {len(outputs)}")
        s = self.scale
        canvas = Canvas(3, *(d * s for d in self._image.shape[-2:]))
        for spec, weight, out in zip(self.tiles, self._weights, outputs, strict=True):
            out = out.detach().to("cpu", torch.float32)
            if out.dim() == 4 and out.shape[0] == 1:
                out = out[0]
            expected = (3, spec.height * s, spec.width * s)
            if tuple(out.shape) != expected:
                raise ValueError(f"output shape {tuple(out.shape)} != {expected}")
            canvas.add(_scaled(spec, s), out, weight)
        restored = canvas.result()[None, :, : self.height * s, : self.width * s]
        self._result = restored.clamp(0, 1)

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
