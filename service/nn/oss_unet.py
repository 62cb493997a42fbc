"""The Restormer-shaped U-Net of OSS blocks that every VmambaIR network is built on.

Why a base class rather than a body submodule: the release's checkpoints keep the body's keys
at the top level (``patch_embed``, ``encoder_level1``, ..., ``refinement``) next to each
network's own head (``output`` for deraining, ``tail`` for super-resolution), so subclasses add
their head as sibling attributes and strict loading sees exactly the release's names.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from service.nn.oss import oss_stage
from service.nn.oss_config import OSSUNetConfig
from service.nn.resample import MULTIPLE, Downsample, PatchEmbed, Upsample, pad_to_multiple


class OSSUNet(nn.Module, ABC):
    """Body: three levels down, a latent level, three up with skip concatenation, refinement.

    Widths C, 2C, 4C, 8C; decoder level 1 and the refinement run at 2C (no channel reduction
    at level 1). ``forward`` takes any H, W: it reflect-pads bottom/right to a multiple of 8,
    as the release's test scripts do, and crops the head's output back to ``scale``·(H, W).
    """

    #: Output size / input size; the heads of the release are ×1 (restoration) or ×4 (SR).
    scale: int = 1

    def __init__(self, config: OSSUNetConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3, c4 = (config.dim * m for m in (1, 2, 4, 8))
        n1, n2, n3, n4 = config.num_blocks
        bias = config.bias

        self.patch_embed = PatchEmbed(config.inp_channels, c1)
        self.encoder_level1 = oss_stage(c1, n1, config)
        self.down1_2 = Downsample(c1)
        self.encoder_level2 = oss_stage(c2, n2, config)
        self.down2_3 = Downsample(c2)
        self.encoder_level3 = oss_stage(c3, n3, config)
        self.down3_4 = Downsample(c3)
        self.latent = oss_stage(c4, n4, config)
        self.up4_3 = Upsample(c4)
        self.reduce_chan_level3 = nn.Conv2d(c4, c3, kernel_size=1, bias=bias)
        self.decoder_level3 = oss_stage(c3, n3, config)
        self.up3_2 = Upsample(c3)
        self.reduce_chan_level2 = nn.Conv2d(c3, c2, kernel_size=1, bias=bias)
        self.decoder_level2 = oss_stage(c2, n2, config)
        self.up2_1 = Upsample(c2)
        self.decoder_level1 = oss_stage(c2, n1, config)
        self.refinement = oss_stage(c2, config.num_refinement_blocks, config)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded image (B, C_in, H, W) -> (stem output at C, refined features at 2C)."""
        emb = self.patch_embed(x)
        enc1 = self.encoder_level1(emb)
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        lat = self.latent(self.down3_4(enc3))

        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(lat), enc3], dim=1))
        dec3 = self.decoder_level3(dec3)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], dim=1))
        dec2 = self.decoder_level2(dec2)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], dim=1))
        return emb, self.refinement(dec1)

    @abstractmethod
    def head(self, features: torch.Tensor, emb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Refined features, stem output and padded image -> the padded output."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        x = pad_to_multiple(img, MULTIPLE)
        emb, features = self.features(x)
        out = self.head(features, emb, x)
        return out[..., : self.scale * h, : self.scale * w]


def count_parameters(network: type[OSSUNet], config: Any) -> int:
    """Parameters of a config without allocating them (the meta device builds shapes only)."""
    with torch.device("meta"):
        model = network(config)
    return sum(math.prod(p.shape) for p in model.parameters())
