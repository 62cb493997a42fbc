"""Whole-image restoration with a Diff-Mamba noise estimator and the S-step DDIM schedule."""

from __future__ import annotations

from collections.abc import Callable

import torch

from service.diffusion.schedule import MAX_STEPS, DDIMSchedule
from service.nn.diffmamba import pad_to_multiple

DEFAULT_STEPS = 4
NoiseEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_SCHEDULE = DDIMSchedule()


def initial_noise(
    shape: tuple[int, ...], seed: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x_T drawn on the CPU so a seed gives the same image on any device."""
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def condition_input(cond: torch.Tensor) -> torch.Tensor:
    """The network sees the degraded image in [-1, 1]."""
    return 2 * cond - 1


def restore(
    model: NoiseEstimator,
    cond: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    x_T: torch.Tensor | None = None,
    seed: int | None = None,
    schedule: DDIMSchedule | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Restore ``cond`` (B, 3, H, W) in [0, 1]; returns (B, 3, H, W) in [0, 1].

    x_T has the image's shape; it is drawn from ``seed`` (random when None) unless given. Both
    are reflect-padded to multiples of 8 with the image and the result is cropped back.
    Gradients flow when called under autograd (stage-2 training uses that). ``on_step(i, n)`` is
    called after each network pass (progress bars).
    """
    if cond.dim() != 4 or cond.shape[1] != 3:
        raise ValueError(f"cond must be (B, 3, H, W), got {tuple(cond.shape)}")
    if not 1 <= int(steps) <= MAX_STEPS:
        raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {steps}")
    schedule = schedule or _SCHEDULE
    h, w = cond.shape[-2:]
    if x_T is None:
        x_T = initial_noise(tuple(cond.shape), seed)
    elif tuple(x_T.shape) != tuple(cond.shape):
        raise ValueError(f"x_T shape {tuple(x_T.shape)} != cond shape {tuple(cond.shape)}")
    x_T = x_T.to(cond.device, torch.float32)

    y = condition_input(pad_to_multiple(cond.float()))
    x = pad_to_multiple(x_T)
    batch = cond.shape[0]
    pairs = schedule.timestep_pairs(steps)
    for i, (t, t_next) in enumerate(pairs):
        t_vec = torch.full((batch,), float(t), device=cond.device)
        eps = model(torch.cat([y, x], dim=1), t_vec)
        x = schedule.step(x, eps, t, t_next)
        if on_step is not None:
            on_step(i + 1, len(pairs))
    return ((x[..., :h, :w] + 1) / 2).clamp(0, 1)
