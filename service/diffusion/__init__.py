"""Diffusion schedule and sampler, independent of the network that estimates the noise."""

from service.diffusion.sampler import DEFAULT_STEPS, initial_noise, restore
from service.diffusion.schedule import MAX_STEPS, DDIMSchedule

__all__ = ["DEFAULT_STEPS", "MAX_STEPS", "DDIMSchedule", "initial_noise", "restore"]
