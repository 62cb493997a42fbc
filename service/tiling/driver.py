"""Synchronous tiled drivers kept for their callers: both are ``run_session`` over a session.

``restore_tiled`` samples a diffusion model over tiles, ``run_single_pass`` runs a one-pass
model whole or in tiles; the session protocol and its driver live in service.restoration.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from service.diffusion.sampler import DEFAULT_STEPS, NoiseEstimator
from service.diffusion.schedule import DDIMSchedule
from service.models.kinds import DIFFUSION, SINGLE_PASS, ModelKind
from service.tiling.session import TiledRestoration
from service.tiling.single_pass import ScaledSinglePassRestoration, SinglePassRestoration


def restore_tiled(
    model: NoiseEstimator,
    cond: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    seed: int | None = None,
    x_T: torch.Tensor | None = None,
    tile: int = 256,
    overlap: int = 32,
    max_batch: int = 8,
    device: torch.device | str | None = None,
    on_step: Callable[[int, int], None] | None = None,
    schedule: DDIMSchedule | None = None,
) -> torch.Tensor:
    """Restore ``cond`` (1, 3, H, W) in [0, 1] tile by tile; returns (1, 3, H, W) on the CPU."""
    from service.restoration import model_pass, run_session

    session = TiledRestoration(
        cond, steps=steps, seed=seed, x_T=x_T, tile=tile, overlap=overlap, schedule=schedule
    )
    return run_session(session, model_pass(model, DIFFUSION, device), max_batch, on_step)


def run_single_pass(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int | None = None,
    overlap: int = 32,
    max_batch: int = 8,
    device: torch.device | str = "cpu",
    kind: ModelKind = SINGLE_PASS,
) -> torch.Tensor:
    """(1, 3, H, W) -> restored (1, 3, sH, sW) on the CPU; ``tile=None``: the whole image."""
    from service.restoration import model_pass, run_session

    cls = ScaledSinglePassRestoration if kind.scale > 1 else SinglePassRestoration
    session = cls(image, tile=tile, overlap=overlap, kind=kind)
    return run_session(session, model_pass(model, kind, device), max_batch)
