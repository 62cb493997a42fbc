"""The training objectives, as functions of (model, batch[, generator]).

Diff-Mamba: stage 1 teaches the network to estimate the noise at any timestep; stage 2 fine-tunes
the whole S-step sampler end to end on image quality. Single-pass models (VmambaIR) regress the
clean image directly. Both image-quality objectives take their loss from
``losses.RESTORATION_LOSSES`` (the release's: L1 for VmambaIR, α·(1 − MS-SSIM) + (1 − α)·L1 for
Diff-Mamba's stage 2; or the PSNR loss). All randomness
comes from the ``generator`` passed in (drawn on the CPU, then moved), so a saved generator state
reproduces a step exactly on any device.
"""

from __future__ import annotations

import torch
from torch import nn

from service.diffusion import DDIMSchedule, restore
from service.training.losses import ImageLoss, l1_loss, restoration_loss, stage2_loss

SCHEDULE = DDIMSchedule()


def antithetic_timesteps(
    n: int, generator: torch.Generator, num_timesteps: int = SCHEDULE.num_train_timesteps
) -> torch.Tensor:
    """(n,) long timesteps, uniform on [0, T), in antithetic pairs (t, T−1−t).

    Why: pairing each draw with its mirror halves the variance of the batch's loss over t (the
    DDPM/DDIM training code the release builds on does the same). For odd n the last pair is cut.
    """
    half = torch.randint(0, num_timesteps, (n // 2 + n % 2,), generator=generator)
    return torch.cat([half, num_timesteps - 1 - half])[:n]


def _randn(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def stage1_loss(
    model: nn.Module, degraded: torch.Tensor, clean: torch.Tensor, generator: torch.Generator,
    schedule: DDIMSchedule = SCHEDULE,
) -> torch.Tensor:
    """L1(net(cat(y, x_t), t), ε) with y, x0 in [−1, 1] and x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε."""
    y, x0 = 2 * degraded - 1, 2 * clean - 1
    t = antithetic_timesteps(x0.shape[0], generator, schedule.num_train_timesteps)
    eps = _randn(x0.shape, generator, x0.device)
    x_t = schedule.add_noise(x0, eps, t)
    pred = model(torch.cat([y, x_t], dim=1), t.to(x0.device, torch.float32))
    return l1_loss(pred, eps)


def stage2_loss_fn(
    model: nn.Module, degraded: torch.Tensor, clean: torch.Tensor, generator: torch.Generator,
    steps: int, loss: ImageLoss | None = None,
) -> torch.Tensor:
    """``loss`` (default: the release's α·(1 − MS-SSIM) + (1 − α)·L1) of the S-step sampler's
    output, gradients through every step."""
    x_T = _randn(clean.shape, generator, clean.device)
    restored = restore(model, degraded, steps=steps, x_T=x_T)
    return (loss or stage2_loss)(restored, clean)


def single_pass_loss(model: nn.Module, degraded: torch.Tensor, clean: torch.Tensor,
                     loss: ImageLoss | str = "l1") -> torch.Tensor:
    """``loss``(net(y), x0) with images in [0, 1] (a name of ``RESTORATION_LOSSES``, configured
    with its defaults, or a built loss): the network restores in one pass, nothing is drawn."""
    fn = restoration_loss(loss) if isinstance(loss, str) else loss
    return fn(model(degraded), clean)
