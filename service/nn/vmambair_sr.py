"""VmambaIR's ×4 super-resolution networks: ``MambaRealSR11`` (real-world) and ``MambaSISR6``
(bicubic single-image SR).

Input: an RGB image (B, 3, H, W) in [0, 1]; output (B, 3, 4H, 4W), not clamped: the tail's
prediction plus the nearest-neighbour ×4 of the (padded) input. Any H, W: the input is
reflect-padded bottom/right to a multiple of 8 and the output cropped to 4H × 4W, as the
release's test pipeline does. Not tiled: every OSS block pools the whole feature map, so the
result depends on the full padded extent.

Both share deraining's U-Net and OSS blocks (service.nn.oss_unet) and merge the channel branch
multiplicatively (y·c + y). They differ in that branch: MambaRealSR11 scans the pooled vector
itself (one feature per channel, dt rank = the spatial one); MambaSISR6 lifts it to four
features as Mamber32 does. One network class serves both; the config's type says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from service.nn.oss_config import OSSUNetConfig
from service.nn.oss_unet import OSSUNet, count_parameters

SR_SCALE = 4
"""The release's tail is two conv + PixelShuffle(2) stages, whatever its ``scale`` says."""


@dataclass(frozen=True)
class VmambaSRConfig(OSSUNetConfig):
    """What both SR networks add to the body: the output scale (the release's ``scale``)."""

    channel_merge: str = "multiply"
    scale: int = SR_SCALE

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.scale != SR_SCALE:
            problems.append(f"scale must be {SR_SCALE} (the release's tail is ×4), "
                            f"got {self.scale}")
        if self.inp_channels != self.out_channels:
            problems.append("the image residual needs inp_channels == out_channels")
        return problems


@dataclass(frozen=True)
class MambaRealSR11Config(VmambaSRConfig):
    """Defaults: the published real-world SR config (10,497,813 parameters)."""

    num_blocks: tuple[int, int, int, int] = (6, 2, 2, 1)
    num_refinement_blocks: int = 6
    channel_lift: int | None = None
    channel_dt_rank: int | None = None


@dataclass(frozen=True)
class MambaSISR6Config(VmambaSRConfig):
    """Defaults: the released ``MambaSISR15_x4`` config (12,028,273 parameters), not the
    class's constructor defaults."""

    num_blocks: tuple[int, int, int, int] = (15, 1, 1, 1)
    num_refinement_blocks: int = 15


def upsample_tail(channels: int, out_channels: int) -> nn.Sequential:
    """EDSR's ×4 ``Upsampler`` (conv c -> 4c, PixelShuffle(2), twice), then a 3×3 conv to the
    image: keys ``tail.0.0``, ``tail.0.2``, ``tail.1``; every conv biased, as released."""

    def conv(cin: int, cout: int) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=True)

    upsampler = nn.Sequential(
        conv(channels, 4 * channels), nn.PixelShuffle(2),
        conv(channels, 4 * channels), nn.PixelShuffle(2),
    )  # fmt: skip
    return nn.Sequential(upsampler, conv(channels, out_channels))


class VmambaSR(OSSUNet):
    """``model(img)``: (B, 3, H, W) in [0, 1] -> (B, 3, 4H, 4W), not clamped."""

    config: VmambaSRConfig
    scale = SR_SCALE

    def __init__(self, config: VmambaSRConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            config = MambaRealSR11Config.from_dict(kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword sizes, not both")
        super().__init__(config)
        self.tail = upsample_tail(2 * config.dim, config.out_channels)

    def head(self, features: torch.Tensor, emb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Nearest, not bicubic: each input pixel becomes a 4×4 block, as released.
        return self.tail(features) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def sr_parameter_count(config: VmambaSRConfig) -> int:
    """Parameters of a config without allocating them."""
    return count_parameters(VmambaSR, config)
