"""VmambaIR, the release's deraining network ``Mamber32``: a Restormer-shaped U-Net of OSS blocks.

Input: an RGB image (B, 3, H, W) in [0, 1]; output: the restored image (before clamping), the
network's prediction added to its input. Any H, W: the input is reflect-padded bottom/right to a
multiple of 8 and the output cropped back, as the release's test script does.

The body and the OSS blocks are shared with the release's super-resolution networks
(service.nn.oss_unet, service.nn.oss); the layers they are made of are shared with Diff-Mamba
(channel LayerNorms, conv + pixel (un)shuffle resampling, the gated depthwise FFN, the
four-direction scan core). What is Mamber32's own is its head (a 3×3 conv and the image
residual) and its additive channel merge. Every size is a `VmambaIRConfig` field; the defaults
are the published config (28,709,875 parameters). Keys and quirks follow the authors'
checkpoints (BasicSR ``params``) exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from service.nn.oss import CHANNEL_DIRECTIONS, SPATIAL_DIRECTIONS, OSSBlock, OSSModule
from service.nn.oss_config import OSSUNetConfig
from service.nn.oss_unet import OSSUNet, count_parameters

__all__ = [
    "CHANNEL_DIRECTIONS",
    "SPATIAL_DIRECTIONS",
    "OSSBlock",
    "OSSModule",
    "VmambaIR",
    "VmambaIRConfig",
    "parameter_count",
]


@dataclass(frozen=True)
class VmambaIRConfig(OSSUNetConfig):
    """Every size of the network. Defaults are the published deraining config (28.71 M)."""

    dual_pixel_task: bool = False  # deblurring's variant: skip conv, no image residual

    def problems(self) -> list[str]:
        problems = super().problems()
        if not self.dual_pixel_task and self.inp_channels != self.out_channels:
            problems.append("the image residual needs inp_channels == out_channels")
        return problems


class VmambaIR(OSSUNet):
    """``model(img)``: (B, 3, H, W) in [0, 1] -> restored (B, 3, H, W), not clamped."""

    config: VmambaIRConfig

    def __init__(self, config: VmambaIRConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            config = VmambaIRConfig.from_dict(kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword sizes, not both")
        super().__init__(config)
        c1, c2 = config.dim, 2 * config.dim
        bias = config.bias
        self.skip_conv = (
            nn.Conv2d(c1, c2, kernel_size=1, bias=bias) if config.dual_pixel_task else None
        )
        self.output = nn.Conv2d(c2, config.out_channels, kernel_size=3, padding=1, bias=bias)

    def head(self, features: torch.Tensor, emb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.skip_conv is not None:
            return self.output(features + self.skip_conv(emb))
        return self.output(features) + x


def parameter_count(config: VmambaIRConfig) -> int:
    """Parameters of a config without allocating them."""
    return count_parameters(VmambaIR, config)
