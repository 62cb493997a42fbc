"""Synchronous driver for ``TiledRestoration``: the CLI's and the benchmarks' loop.

The HTTP service drives the same session through its batcher instead; this loop simply chunks
each step's tiles into batches of ``max_batch`` on one device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from service.diffusion.sampler import DEFAULT_STEPS, NoiseEstimator
from service.diffusion.schedule import DDIMSchedule
from service.tiling.session import TiledRestoration


def _model_placement(model: NoiseEstimator) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU/float32 otherwise)."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.device, p.dtype
    return torch.device("cpu"), torch.float32


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
    """Restore ``cond`` (1, 3, H, W) in [0, 1] tile by tile; returns (1, 3, H, W) on the CPU.

    Inference only: the whole-image state is blended on the CPU outside autograd, so the passes
    always run under ``torch.inference_mode()`` (no activations kept for backward, which is
    what keeps memory bounded). ``on_step(i, n)`` is called after each step over all tiles.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    session = TiledRestoration(
        cond, steps=steps, seed=seed, x_T=x_T, tile=tile, overlap=overlap, schedule=schedule
    )
    model_device, dtype = _model_placement(model)
    device = torch.device(device) if device is not None else model_device
    with torch.inference_mode():
        while not session.done:
            inputs, t, _ = session.step_inputs()
            eps_tiles: list[torch.Tensor] = []
            for start in range(0, len(inputs), max_batch):
                batch = torch.stack(inputs[start : start + max_batch]).to(device, dtype)
                t_vec = torch.full((batch.shape[0],), float(t), device=device)
                eps_tiles.extend(model(batch, t_vec).float().cpu().unbind(0))
            del inputs
            session.advance(eps_tiles)
            if on_step is not None:
                on_step(session.step_index, session.num_steps)
        result = session.result()
    return result.clone()  # a normal tensor, usable outside inference mode
