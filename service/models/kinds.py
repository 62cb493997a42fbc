"""Model kinds: how a network is driven, declared once and read by everything that runs one.

Engines, exporters, the batcher path, restoration sessions and the front-ends ask a kind what
they need (input channels, whether a timestep goes in, output scale, pad multiple, warm-up
inputs) instead of comparing names, so a new architecture only declares its kind in the
registry. A kind is a ``str`` subclass holding its name: it travels unchanged through JSON,
metrics labels and exported metadata, and compares equal to the name it was declared with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from service.nn.resample import MULTIPLE

WARMUP_T = 500.0
"""A mid timestep: warm-up and precision checks see a typical noisy x_t."""


def warmup_image(size: int, seed: int = 0) -> torch.Tensor:
    """(3, size, size) in [0, 1]: gradients, a ripple and a little noise."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    image = torch.stack([xx, yy, 0.5 + 0.25 * torch.sin(12 * (xx + yy))])
    return (image + 0.05 * torch.randn(3, size, size, generator=g)).clamp(0, 1)


class ModelKind(str):
    """One way of driving a network.

    ``takes_timestep`` kinds are noise estimators: ``model(cat(2·cond − 1, x_t), t)`` run by the
    DDIM sampler, ``input_channels`` 6. The others restore in one pass, ``model(image)``, with an
    output ``scale`` times the input's height and width. Inputs are reflect-padded bottom/right
    to ``pad_multiple`` and outputs cropped back.
    """

    input_channels: int
    takes_timestep: bool
    scale: int
    pad_multiple: int

    def __new__(cls, name: str, *, input_channels: int, takes_timestep: bool, scale: int = 1,
                pad_multiple: int = MULTIPLE) -> ModelKind:
        if scale < 1 or pad_multiple < 1:
            raise ValueError(f"{name}: scale and pad_multiple must be positive")
        if takes_timestep and scale != 1:
            raise ValueError(f"{name}: a diffusion kind restores at the input's size")
        kind = super().__new__(cls, name)
        kind.input_channels = input_channels
        kind.takes_timestep = takes_timestep
        kind.scale = scale
        kind.pad_multiple = pad_multiple
        return kind

    @property
    def name(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"ModelKind({self.name!r}, scale={self.scale})"

    def forward(self, model: Callable[..., torch.Tensor], x: torch.Tensor,
                t: torch.Tensor | None) -> torch.Tensor:
        """One pass with this kind's argument convention."""
        return model(x, t) if self.takes_timestep else model(x)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height * self.scale, width * self.scale

    def warmup_inputs(self, size: int, batch: int = 1,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x (batch, C, size, size), t (batch,) or None), CPU float32, image-like."""
        image = warmup_image(size, seed)
        if not self.takes_timestep:
            return image[None].repeat(batch, 1, 1, 1), None
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.cat([2 * image - 1, torch.randn(3, size, size, generator=g)])
        return x[None].repeat(batch, 1, 1, 1), torch.full((batch,), WARMUP_T)


DIFFUSION = ModelKind("diffusion", input_channels=6, takes_timestep=True)
SINGLE_PASS = ModelKind("single_pass", input_channels=3, takes_timestep=False)


def super_resolution(scale: int) -> ModelKind:
    """A one-pass network whose output is ``scale`` × the input in each dimension."""
    if scale < 2:
        raise ValueError(f"a super-resolution scale must be at least 2, got {scale}")
    return ModelKind("super_resolution", input_channels=3, takes_timestep=False, scale=scale)


SUPER_RESOLUTION = super_resolution(4)
KINDS: dict[str, ModelKind] = {k.name: k for k in (DIFFUSION, SINGLE_PASS, SUPER_RESOLUTION)}


def model_kind(kind: str) -> ModelKind:
    """The kind object for a kind or its name (exported metadata, older callers)."""
    if isinstance(kind, ModelKind):
        return kind
    try:
        return KINDS[str(kind)]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(KINDS)}") from None
