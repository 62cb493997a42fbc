"""One request's restoration: tiles -> batcher (step by step) -> blended whole image.

The request's coroutine owns the sampler state; the batcher only ever sees (tile, timestep)
pairs, so tiles of many requests at different steps share network passes. Single-pass models
(VmambaIR) take the same batcher with a dummy timestep, and one pass instead of S steps.
"""

from __future__ import annotations

import asyncio

import torch

from service.batching import StepTiming
from service.runtime import TaskModel
from service.tiling import SinglePassRestoration, TiledRestoration

DUMMY_TIMESTEP = 0.0
"""What single-pass items carry: the batcher groups (x, t) pairs, the network ignores t."""


async def restore_diffusion(
    task: TaskModel,
    cond: torch.Tensor,
    *,
    steps: int,
    seed: int,
    tile: int,
    overlap: int,
    deadline: float,
    timing: StepTiming,
) -> tuple[torch.Tensor, int]:
    """-> (restored (1, 3, H, W) in [0, 1], number of tiles)."""
    assert task.batcher is not None
    session = await asyncio.to_thread(
        TiledRestoration, cond, steps=steps, seed=seed, tile=tile, overlap=overlap
    )
    while not session.done:
        inputs, t, _ = await asyncio.to_thread(session.step_inputs)
        eps = await task.batcher.submit_many(
            inputs, [float(t)] * len(inputs), deadline=deadline, timing=timing
        )
        await asyncio.to_thread(session.advance, eps)
    return await asyncio.to_thread(session.result), session.num_tiles


async def restore_single_pass(
    task: TaskModel,
    image: torch.Tensor,
    *,
    tile: int | None,
    overlap: int,
    deadline: float,
    timing: StepTiming,
) -> tuple[torch.Tensor, int]:
    """-> (restored (1, 3, H, W) in [0, 1], number of tiles); ``tile=None``: the whole image.

    Whole images of one size from concurrent requests share a batch (the batcher groups equal
    shapes), as do tiles, which all have one shape per tile size.
    """
    assert task.batcher is not None
    session = await asyncio.to_thread(SinglePassRestoration, image, tile=tile, overlap=overlap)
    inputs = session.inputs()
    outputs = await task.batcher.submit_many(
        inputs, [DUMMY_TIMESTEP] * len(inputs), deadline=deadline, timing=timing
    )
    return await asyncio.to_thread(session.result, outputs), session.num_tiles
