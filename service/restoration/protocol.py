"""What every restoration session is to its driver, whatever the model kind.

A session holds one image's state and never calls the network: a driver asks for a round's
inputs (one per tile, with the timestep each carries), runs them however it likes (a
synchronous loop, or the service's dynamic batcher mixing tiles of many requests) and hands the
outputs back. Diffusion takes S rounds, one-pass kinds one. So the API, the CLI, evaluation and
``service.diffusion.restore`` drive every kind the same way. A driver may take a round all at
once (``round_inputs`` / ``advance``) or stream it tile by tile (``tile_input`` / ``accept`` /
``finish_round``), which is how the service keeps only a batch of tiles in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from service.models.kinds import ModelKind


class RestorationSession(Protocol):
    kind: ModelKind
    #: The noise seed used (diffusion), None where nothing is drawn.
    seed: int | None

    @property
    def num_tiles(self) -> int: ...

    @property
    def rounds(self) -> int:
        """Network passes per tile in all."""
        ...

    @property
    def done(self) -> bool: ...

    @property
    def round_timestep(self) -> float:
        """The timestep every tile of this round carries (0 for kinds that take none)."""
        ...

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of every tile's network input: one shape per session, for batching."""
        ...

    def tile_input(self, index: int) -> torch.Tensor:
        """Tile ``index``'s network input for this round, made on demand (any thread)."""
        ...

    def accept(self, index: int, output: torch.Tensor) -> None:
        """Tile ``index``'s output for this round, blended in at once (each tile once)."""
        ...

    def finish_round(self) -> None:
        """Every tile's output of this round is in: move to the next round (or the result)."""
        ...

    def state_bytes(self) -> int:
        """Bytes the whole-image state holds now."""
        ...

    def round_inputs(self) -> tuple[list[torch.Tensor], list[float]]:
        """This round's network inputs (C, h, w) on the CPU, one per tile, and their timesteps."""
        ...

    def advance(self, outputs: Sequence[torch.Tensor] | torch.Tensor) -> None:
        """The outputs for ``round_inputs``, in the same order."""
        ...

    def result(self) -> torch.Tensor:
        """(1, 3, sH, sW) in [0, 1] on the CPU, s the kind's scale."""
        ...
