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

from service.diffusion.sampler import DEFAULT_STEPS, DDIMRun, condition_input, initial_noise
from service.diffusion.schedule import DDIMSchedule
from service.models.kinds import DIFFUSION, ModelKind
from service.nn.resample import pad_to_multiple
from service.tiling.blend import Canvas, ramp_sides, tile_weight
from service.tiling.grid import TileSpec, tile_grid

# Seeds are reported to clients (JSON): stay within the integers a double holds exactly.
_SEED_BITS = 53


class TiledRestoration:
    """Restore one image tile by tile; drive it with ``round_inputs`` / ``advance``.

    ``cond`` is (1, 3, H, W) in [0, 1]. x_T is drawn once for the whole image from ``seed`` (a
    random seed is drawn and reported in ``self.seed`` when both seed and x_T are None), then
    padded exactly as ``service.diffusion.restore`` pads it, so a one-tile image reproduces the
    whole-image sampler. The DDIM walk itself is ``DDIMRun``'s, over the whole padded state.
    """

    kind: ModelKind = DIFFUSION

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
        cond = cond.detach().to("cpu", torch.float32)
        self.height, self.width = (int(s) for s in cond.shape[-2:])
        if x_T is None:
            if seed is None:
                seed = secrets.randbits(_SEED_BITS)
            x_T = initial_noise(tuple(cond.shape), seed)
        elif tuple(x_T.shape) != tuple(cond.shape):
            raise ValueError(f"x_T shape {tuple(x_T.shape)} != cond shape {tuple(cond.shape)}")
        self.seed: int | None = None if seed is None else int(seed)
        self._y = condition_input(pad_to_multiple(cond))[0]  # (3, H', W'), constant
        padded_x = pad_to_multiple(x_T.detach().to("cpu", torch.float32))[0]
        self._run = DDIMRun(padded_x, steps, schedule)
        self.schedule = self._run.schedule
        self.pairs = self._run.pairs
        ph, pw = (int(s) for s in padded_x.shape[-2:])
        self.padded_shape = (ph, pw)
        self.tiles: list[TileSpec] = tile_grid(self.height, self.width, tile, overlap)
        self._weights = [
            tile_weight(s.height, s.width, ramp_sides(s, ph, pw), overlap) for s in self.tiles
        ]

    @property
    def step_index(self) -> int:
        return self._run.index

    @property
    def num_tiles(self) -> int:
        return len(self.tiles)

    @property
    def num_steps(self) -> int:
        """Network passes per tile (S = 3 gives 4 in this schedule)."""
        return self._run.num_steps

    @property
    def rounds(self) -> int:
        return self.num_steps

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(h, w) shared by every tile: one static shape for engines and batching."""
        return self.tiles[0].height, self.tiles[0].width

    @property
    def done(self) -> bool:
        return self._run.done

    @property
    def timesteps(self) -> tuple[int, int]:
        """(t, t_next) of the current step."""
        return self._run.timesteps

    def step_inputs(self) -> tuple[list[torch.Tensor], int, int]:
        """The network inputs (6, h, w) per tile (CPU, float32) and this step's (t, t_next).

        Feed each input to the network with timestep ``t``; the ε tiles go to ``advance``.
        """
        t, t_next = self.timesteps
        x = self._run.x
        inputs = [
            torch.cat([self._y[:, s.slices[0], s.slices[1]], x[:, s.slices[0], s.slices[1]]])
            for s in self.tiles
        ]
        return inputs, t, t_next

    def round_inputs(self) -> tuple[list[torch.Tensor], list[float]]:
        inputs, t, _ = self.step_inputs()
        return inputs, [float(t)] * len(inputs)

    def advance(self, eps_tiles: Sequence[torch.Tensor] | torch.Tensor) -> None:
        """Take this step's ε per tile (in ``tiles`` order), blend them, take the DDIM step.

        Blending ε equals blending the tiles' x_{t_next}: the DDIM step is affine in ε with
        coefficients shared by every tile, and every tile starts from the same (blended) x_t.
        """
        if self.done:
            raise RuntimeError("sampling is finished; call result()")
        if len(eps_tiles) != len(self.tiles):
            raise ValueError(f"expected {len(self.tiles)} eps tiles, got {len(eps_tiles)}")
        canvas = Canvas(*self._run.x.shape)
        for spec, weight, eps in zip(self.tiles, self._weights, eps_tiles, strict=True):
            eps = eps.detach().to("cpu", torch.float32)
            if eps.dim() == 4 and eps.shape[0] == 1:
                eps = eps[0]
            if tuple(eps.shape) != (3, spec.height, spec.width):
                raise ValueError(
                    f"eps tile shape {tuple(eps.shape)} != {(3, spec.height, spec.width)}"
                )
            canvas.add(spec, eps, weight)
        self._run.advance(canvas.result())

    def result(self) -> torch.Tensor:
        """The restored (1, 3, H, W) image in [0, 1], cropped back to the input size."""
        return self._run.image(self.height, self.width)[None]
