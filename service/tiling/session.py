"""Tiled DDIM sampling as a state machine that never calls the network itself.

The caller asks for a step's tile inputs, runs the network however it likes (a synchronous loop,
or the HTTP service's dynamic batcher mixing tiles of many requests) and hands the ε tiles back.
Between steps the tiles' updated x are blended into ONE whole-image state (MultiDiffusion), and
the next step's tiles are cut from it, so overlapping tiles always start a step from the same
values and no seams appear. The whole-image state lives on the CPU; memory on the device is
bounded by the tile batch, not the image.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from service.diffusion.sampler import DEFAULT_STEPS, condition_input, initial_noise
from service.diffusion.schedule import MAX_STEPS, DDIMSchedule
from service.nn.diffmamba import pad_to_multiple
from service.tiling.blend import Canvas, ramp_sides, tile_weight
from service.tiling.grid import TileSpec, tile_grid

_SCHEDULE = DDIMSchedule()
# Seeds are reported to clients (JSON): stay within the integers a double holds exactly.
_SEED_BITS = 53


class TiledRestoration:
    """Restore one image tile by tile; drive it with ``step_inputs`` / ``advance``.

    ``cond`` is (1, 3, H, W) in [0, 1]. x_T is drawn once for the whole image from ``seed`` (a
    random seed is drawn and reported in ``self.seed`` when both seed and x_T are None), then
    padded exactly as ``service.diffusion.restore`` pads it, so a one-tile image reproduces the
    whole-image sampler.
    """

    def __init__(
        self,
        cond: torch.Tensor,
        steps: int = DEFAULT_STEPS,
        seed: int | None = None,
        x_T: torch.Tensor | None = None,
        tile: int = 256,
        overlap: int = 32,
        schedule: DDIMSchedule | None = None,
    ) -> None:
        if cond.dim() != 4 or cond.shape[0] != 1 or cond.shape[1] != 3:
            raise ValueError(f"cond must be (1, 3, H, W), got {tuple(cond.shape)}")
        if not 1 <= int(steps) <= MAX_STEPS:
            raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {steps}")
        cond = cond.detach().to("cpu", torch.float32)
        self.height, self.width = (int(s) for s in cond.shape[-2:])
        if x_T is None:
            if seed is None:
                seed = secrets.randbits(_SEED_BITS)
            x_T = initial_noise(tuple(cond.shape), seed)
        elif tuple(x_T.shape) != tuple(cond.shape):
            raise ValueError(f"x_T shape {tuple(x_T.shape)} != cond shape {tuple(cond.shape)}")
        self.seed: int | None = None if seed is None else int(seed)
        self.schedule = schedule or _SCHEDULE
        self.pairs = self.schedule.timestep_pairs(int(steps))

        self._y = condition_input(pad_to_multiple(cond))[0]  # (3, H', W'), constant
        self._x = pad_to_multiple(x_T.detach().to("cpu", torch.float32))[0]  # evolving state
        ph, pw = (int(s) for s in self._x.shape[-2:])
        self.padded_shape = (ph, pw)
        self.tiles: list[TileSpec] = tile_grid(self.height, self.width, tile, overlap)
        self._weights = [
            tile_weight(s.height, s.width, ramp_sides(s, ph, pw), overlap) for s in self.tiles
        ]
        self.step_index = 0

    @property
    def num_tiles(self) -> int:
        return len(self.tiles)

    @property
    def num_steps(self) -> int:
        """Network passes per tile (S = 3 gives 4 in this schedule)."""
        return len(self.pairs)

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(h, w) shared by every tile: one static shape for engines and batching."""
        return self.tiles[0].height, self.tiles[0].width

    @property
    def done(self) -> bool:
        return self.step_index >= len(self.pairs)

    @property
    def timesteps(self) -> tuple[int, int]:
        """(t, t_next) of the current step."""
        self._require_running()
        return self.pairs[self.step_index]

    def step_inputs(self) -> tuple[list[torch.Tensor], int, int]:
        """The network inputs (6, h, w) per tile (CPU, float32) and this step's (t, t_next).

        Feed each input to the network with timestep ``t``; the ε tiles go to ``advance``.
        """
        t, t_next = self.timesteps
        ys, xs = zip(*(s.slices for s in self.tiles), strict=True)
        inputs = [
            torch.cat([self._y[:, y, x], self._x[:, y, x]], dim=0)
            for y, x in zip(ys, xs, strict=True)
        ]
        return inputs, t, t_next

    def advance(self, eps_tiles: Sequence[torch.Tensor] | torch.Tensor) -> None:
        """Take this step's ε per tile (in ``tiles`` order) and blend the tiles' x_{t_next}.

        Blending x_{t_next} equals blending ε: the DDIM step is affine in ε with coefficients
        shared by every tile, and every tile starts from the same (blended) x_t.
        """
        t, t_next = self.timesteps
        if len(eps_tiles) != len(self.tiles):
            raise ValueError(f"expected {len(self.tiles)} eps tiles, got {len(eps_tiles)}")
        canvas = Canvas(*self._x.shape)
        for spec, weight, eps in zip(self.tiles, self._weights, eps_tiles, strict=True):
            eps = eps.detach().to("cpu", torch.float32)
            if eps.dim() == 4 and eps.shape[0] == 1:
                eps = eps[0]
            if tuple(eps.shape) != (3, spec.height, spec.width):
                raise ValueError(
                    f"eps tile shape {tuple(eps.shape)} != {(3, spec.height, spec.width)}"
                )
            x_tile = self._x[:, spec.slices[0], spec.slices[1]]
            canvas.add(spec, self.schedule.step(x_tile, eps, t, t_next), weight)
        self._x = canvas.result()
        self.step_index += 1

    def result(self) -> torch.Tensor:
        """The restored (1, 3, H, W) image in [0, 1], cropped back to the input size."""
        if not self.done:
            raise RuntimeError(f"sampling not finished ({self.step_index}/{self.num_steps} steps)")
        return ((self._x[None, :, : self.height, : self.width] + 1) / 2).clamp(0, 1)

    def _require_running(self) -> None:
        if self.done:
            raise RuntimeError("sampling is finished; call result()")
