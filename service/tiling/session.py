"""Tiled DDIM sampling as a state machine that never calls the network itself.

The caller asks for a step's tile inputs, runs the network however it likes (a synchronous loop,
or the HTTP service's dynamic batcher mixing tiles of many requests) and hands the ε tiles back.
Between steps the tiles' updated x are blended into ONE whole-image state (MultiDiffusion), and
the next step's tiles are cut from it, so overlapping tiles always start a step from the same
values and no seams appear. The whole-image state lives on the CPU; memory on the device is
bounded by the tile batch, not the image.

The state is kept compact (service.tiling.state): the condition as uint8 when it came from
8-bit pixels, x_t and one ε accumulator in float32 (27 bytes per padded pixel, or 36 with a
float condition), separable blend-weight sums, and the step taken in place in row strips. Tile
inputs are cut one at a time (``tile_input``) and ε tiles added one at a time (``accept``), so a
driver can stream them: nothing per tile outlives its pass.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from service.diffusion.sampler import DEFAULT_STEPS, DDIMRun, initial_noise
from service.diffusion.schedule import DDIMSchedule
from service.models.kinds import DIFFUSION, ModelKind
from service.nn.resample import MULTIPLE
from service.tiling.blend import ramp_sides, tile_weight
from service.tiling.grid import TileSpec, tile_grid
from service.tiling.state import (
    as_float_image,
    compact_image,
    pad_like_network,
    row_strips,
    weight_sums,
)

# Seeds are reported to clients (JSON): stay within the integers a double holds exactly.
_SEED_BITS = 53


class TiledRestoration:
    """Restore one image tile by tile; drive it with ``round_inputs`` / ``advance``, or tile by
    tile with ``tile_input`` / ``accept`` / ``finish_round``.

    ``cond`` is (1, 3, H, W): float in [0, 1], or uint8 meaning ``k / 255`` (what an 8-bit
    decode gives, stored at a quarter of the size). x_T is drawn once for the whole image from
    ``seed`` (a random seed is drawn and reported in ``self.seed`` when both seed and x_T are
    None), then padded exactly as ``service.diffusion.restore`` pads it, so a one-tile image
    reproduces the whole-image sampler. The DDIM walk itself is ``DDIMRun``'s, over the whole
    padded state.
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
        self.height, self.width = (int(s) for s in cond.shape[-2:])
        if x_T is not None and tuple(x_T.shape) != tuple(cond.shape):
            raise ValueError(f"x_T shape {tuple(x_T.shape)} != cond shape {tuple(cond.shape)}")
        self._cond = pad_like_network(compact_image(cond), MULTIPLE)  # (3, H', W'), constant
        given = x_T is not None
        if x_T is None:
            if seed is None:
                seed = secrets.randbits(_SEED_BITS)
            x_T = initial_noise(tuple(cond.shape), seed)
        self.seed: int | None = None if seed is None else int(seed)
        padded_x = pad_like_network(x_T.detach().to("cpu", torch.float32)[0], MULTIPLE)
        if given and padded_x.data_ptr() == x_T.data_ptr():
            padded_x = padded_x.clone()  # advanced in place: never write into the caller's x_T
        del x_T
        self._run = DDIMRun(padded_x, steps, schedule)
        self.schedule = self._run.schedule
        self.pairs = self._run.pairs
        ph, pw = (int(s) for s in padded_x.shape[-2:])
        self.padded_shape = (ph, pw)
        self.overlap = overlap
        self.tiles: list[TileSpec] = tile_grid(self.height, self.width, tile, overlap)
        self._weights = [
            tile_weight(s.height, s.width, ramp_sides(s, ph, pw), overlap) for s in self.tiles
        ]
        self._wy, self._wx = weight_sums(self.tiles, ph, pw, overlap)
        self._acc: torch.Tensor | None = None
        self._accepted = 0
        self._image: torch.Tensor | None = None

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
    def round_timestep(self) -> float:
        return float(self.timesteps[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of every tile's network input."""
        return (6, *self.tile_shape)

    @property
    def done(self) -> bool:
        return self._run.done

    @property
    def timesteps(self) -> tuple[int, int]:
        """(t, t_next) of the current step."""
        return self._run.timesteps

    def state_bytes(self) -> int:
        """Bytes the whole-image state holds now (condition, x_t, accumulator)."""
        tensors = [self._cond, self._run.x, self._acc, self._image]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def tile_input(self, index: int) -> torch.Tensor:
        """Tile ``index``'s network input (6, h, w) float32 for this step: cat(2·cond − 1, x_t).

        Reads x_t only; safe to call from a worker thread while the step's other tiles run.
        """
        if self.done:
            raise RuntimeError("sampling is finished; call result()")
        ys, xs = self.tiles[index].slices
        y = as_float_image(self._cond[:, ys, xs]).mul_(2).sub_(1)
        return torch.cat([y, self._run.x[:, ys, xs]])

    def step_inputs(self) -> tuple[list[torch.Tensor], int, int]:
        """The network inputs (6, h, w) per tile (CPU, float32) and this step's (t, t_next).

        Feed each input to the network with timestep ``t``; the ε tiles go to ``advance``.
        """
        t, t_next = self.timesteps
        return [self.tile_input(i) for i in range(len(self.tiles))], t, t_next

    def round_inputs(self) -> tuple[list[torch.Tensor], list[float]]:
        inputs, t, _ = self.step_inputs()
        return inputs, [float(t)] * len(inputs)

    def accept(self, index: int, eps: torch.Tensor) -> None:
        """Add tile ``index``'s ε for this step to the blend (each tile once per step)."""
        if self.done:
            raise RuntimeError("sampling is finished; call result()")
        spec = self.tiles[index]
        eps = eps.detach().to("cpu", torch.float32)
        if eps.dim() == 4 and eps.shape[0] == 1:
            eps = eps[0]
        if tuple(eps.shape) != (3, spec.height, spec.width):
            raise ValueError(
                f"eps tile shape {tuple(eps.shape)} != {(3, spec.height, spec.width)}"
            )
        if self._acc is None:
            self._acc = torch.zeros_like(self._run.x)
        ys, xs = spec.slices
        self._acc[:, ys, xs].addcmul_(self._weights[index], eps)
        self._accepted += 1

    def finish_round(self) -> None:
        """Every tile's ε is in: blend them and take the DDIM step, in place, strip by strip.

        Blending ε equals blending the tiles' x_{t_next}: the DDIM step is affine in ε with
        coefficients shared by every tile, and every tile starts from the same (blended) x_t.
        """
        if self.done:
            raise RuntimeError("sampling is finished; call result()")
        if self._accepted != len(self.tiles) or self._acc is None:
            raise ValueError(f"expected {len(self.tiles)} eps tiles, got {self._accepted}")
        if bool((self._wy <= 0).any()) or bool((self._wx <= 0).any()):
            raise RuntimeError("canvas has pixels no tile covered")
        t, t_next = self.timesteps
        x, acc = self._run.x, self._acc
        for rows in row_strips(*x.shape):
            eps = acc[:, rows].div_(self._wy[rows, None] * self._wx[None, :])
            x[:, rows] = self.schedule.step(x[:, rows], eps, t, t_next)
        self._run.index += 1
        self._accepted = 0
        if self.done:
            self._acc = None
        else:
            acc.zero_()

    def advance(self, eps_tiles: Sequence[torch.Tensor] | torch.Tensor) -> None:
        """Take this step's ε per tile (in ``tiles`` order), blend them, take the DDIM step."""
        if self.done:
            raise RuntimeError("sampling is finished; call result()")
        if len(eps_tiles) != len(self.tiles):
            raise ValueError(f"expected {len(self.tiles)} eps tiles, got {len(eps_tiles)}")
        for i, eps in enumerate(eps_tiles):
            try:
                self.accept(i, eps)
            except ValueError:
                self._accepted, self._acc = 0, None  # a rejected round leaves no partial sum
                raise
        self.finish_round()

    def result(self) -> torch.Tensor:
        """The restored (1, 3, H, W) image in [0, 1], cropped back to the input size.

        Computed in place over x_0 (the state is not needed any more), so no image-sized copy
        is made; the condition is released.
        """
        if self._image is None:
            if not self.done:
                raise RuntimeError(
                    f"sampling not finished ({self._run.index}/{self.num_steps} steps)")
            x = self._run.x
            for rows in row_strips(*x.shape):
                x[:, rows].add_(1).div_(2).clamp_(0, 1)
            self._image = x
            self._cond = self._cond[:, :0]  # the condition is not needed any more
        return self._image[None, :, : self.height, : self.width]
