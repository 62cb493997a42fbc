"""The S-step DDIM walk from x_T, independent of the network and of how it is batched.

``DDIMRun`` is the one sampling loop state: it holds x_t, knows the current (t, t_next) and
takes ε to move to the next step. Its drivers only differ in how they get ε: ``restore``
below (whole image, on the model's device, gradients allowed) and the tiled session
(service.tiling), which cuts tiles of x_t, lets a batcher run them and blends their ε.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from service.diffusion.schedule import MAX_STEPS, DDIMSchedule
from service.nn.resample import pad_to_multiple

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


def check_steps(steps: int) -> int:
    if not 1 <= int(steps) <= MAX_STEPS:
        raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {steps}")
    return int(steps)


class DDIMRun:
    """x_t of one sampling run and where it stands in the schedule.

    ``x`` is whatever tensor the caller samples over (a batch on a device, or a whole padded
    image on the CPU); ``advance`` applies the η = 0 step to all of it at once.
    """

    def __init__(self, x_T: torch.Tensor, steps: int = DEFAULT_STEPS,
                 schedule: DDIMSchedule | None = None) -> None:
        self.schedule = schedule or _SCHEDULE
        self.pairs = self.schedule.timestep_pairs(check_steps(steps))
        self.x = x_T
        self.index = 0

    @property
    def num_steps(self) -> int:
        """Network passes (S = 3 gives 4 in this schedule)."""
        return len(self.pairs)

    @property
    def done(self) -> bool:
        return self.index >= len(self.pairs)

    @property
    def timesteps(self) -> tuple[int, int]:
        """(t, t_next) of the current step."""
        if self.done:
            raise RuntimeError("sampling is finished; read the result")
        return self.pairs[self.index]

    def advance(self, eps: torch.Tensor) -> None:
        t, t_next = self.timesteps
        self.x = self.schedule.step(self.x, eps, t, t_next)
        self.index += 1

    def image(self, height: int, width: int) -> torch.Tensor:
        """x_0 cropped to ``height`` × ``width`` and mapped to [0, 1]."""
        if not self.done:
            raise RuntimeError(f"sampling not finished ({self.index}/{self.num_steps} steps)")
        return ((self.x[..., :height, :width] + 1) / 2).clamp(0, 1)


def restore(
    model: Callable[..., torch.Tensor],
    cond: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    x_T: torch.Tensor | None = None,
    seed: int | None = None,
    schedule: DDIMSchedule | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Restore ``cond`` (B, 3, H, W) in [0, 1] with any served kind of network.

    A noise estimator (Diff-Mamba, or any callable ``model(x, t)``) is sampled over S DDIM steps:
    x_T has the image's shape, drawn from ``seed`` (random when None) unless given; both are
    reflect-padded to multiples of 8 and the result is cropped back; gradients flow under
    autograd (stage-2 training uses that). A one-pass network (VmambaIR, its ×4 SR nets) ignores
    ``steps``, ``seed`` and ``x_T`` and returns ``kind.scale`` × the input, through the same
    whole-image session the service uses. ``on_step(i, n)`` is called after each network pass.
    """
    from service.models.registry import kind_of_model

    if cond.dim() != 4 or cond.shape[1] != 3:
        raise ValueError(f"cond must be (B, 3, H, W), got {tuple(cond.shape)}")
    kind = kind_of_model(model)
    if not kind.takes_timestep:
        from service.restoration import restore_one_pass

        return restore_one_pass(model, kind, cond, on_pass=on_step)
    h, w = cond.shape[-2:]
    if x_T is None:
        x_T = initial_noise(tuple(cond.shape), seed)
    elif tuple(x_T.shape) != tuple(cond.shape):
        raise ValueError(f"x_T shape {tuple(x_T.shape)} != cond shape {tuple(cond.shape)}")
    y = condition_input(pad_to_multiple(cond.float()))
    run = DDIMRun(pad_to_multiple(x_T.to(cond.device, torch.float32)), steps, schedule)
    batch = cond.shape[0]
    while not run.done:
        t_vec = torch.full((batch,), float(run.timesteps[0]), device=cond.device)
        run.advance(model(torch.cat([y, run.x], dim=1), t_vec))
        if on_step is not None:
            on_step(run.index, run.num_steps)
    return run.image(h, w)
