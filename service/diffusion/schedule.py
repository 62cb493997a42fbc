"""The release's noise schedule and deterministic DDIM update, kept apart from any network.

Like a diffusers scheduler: it knows ᾱ and how to step x_t -> x_{t_next} given ε, nothing else.
The service walks these steps itself (one batcher round per step), so the step is public.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_STEPS = 50


@dataclass(frozen=True)
class DDIMSchedule:
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        betas = torch.linspace(
            self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64
        ).float()
        # Index 0 is t = -1 (ᾱ = 1), as in the release's compute_alpha(…, t + 1).
        alphas = (1 - torch.cat([torch.zeros(1), betas])).cumprod(dim=0)
        object.__setattr__(self, "_alphas_cumprod", alphas)

    def alpha_bar(self, t: int | torch.Tensor) -> torch.Tensor:
        """ᾱ(t) for t in -1 … T-1 (float32); ᾱ(-1) = 1."""
        index = torch.as_tensor(t, dtype=torch.long) + 1
        if bool(((index < 0) | (index > self.num_train_timesteps)).any()):
            raise ValueError(f"timestep out of range [-1, {self.num_train_timesteps - 1}]: {t}")
        return self._alphas_cumprod[index]

    def timestep_pairs(self, steps: int) -> list[tuple[int, int]]:
        """(t, t_next) from the noisiest: S = 4 gives (750,500), (500,250), (250,0), (0,-1)."""
        if not 1 <= int(steps) <= self.num_train_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_train_timesteps}, got {steps}")
        skip = self.num_train_timesteps // int(steps)
        seq = list(range(0, self.num_train_timesteps, skip))
        seq_next = [-1, *seq[:-1]]
        return list(zip(reversed(seq), reversed(seq_next), strict=True))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x0) for per-item timesteps ``t`` (B,), used in training."""
        a = self.alpha_bar(t.cpu()).to(x0.device, x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def step(
        self,
        x_t: torch.Tensor,
        eps: torch.Tensor,
        t: int | torch.Tensor,
        t_next: int | torch.Tensor,
    ) -> torch.Tensor:
        """One η = 0 DDIM update. ``t``/``t_next`` are ints or per-item (B,) tensors."""
        shape = (-1, *([1] * (x_t.dim() - 1)))
        a_t = self.alpha_bar(_cpu(t)).to(x_t.device, x_t.dtype).reshape(shape)
        a_next = self.alpha_bar(_cpu(t_next)).to(x_t.device, x_t.dtype).reshape(shape)
        x0 = (x_t - eps * (1 - a_t).sqrt()) / a_t.sqrt()
        return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps


def _cpu(t: int | torch.Tensor) -> int | torch.Tensor:
    return t.cpu() if isinstance(t, torch.Tensor) else t
