"""Channel LayerNorms for NCHW feature maps, in the two flavours Restormer-family checkpoints use.

The parameters live under a ``body`` submodule so the keys read ``normK.body.weight`` /
``normK.body.bias`` exactly as in the authors' checkpoints.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LayerNormType = Literal["WithBias", "BiasFree"]
LAYER_NORM_TYPES: tuple[str, ...] = ("WithBias", "BiasFree")


class _WithBiasBody(nn.Module):
    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        w = self.weight[None, :, None, None]
        b = self.bias[None, :, None, None]
        return (x - mean) / torch.sqrt(var + self.eps) * w + b

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same normalisation of a (..., C) tensor: exactly torch's layer_norm."""
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class _BiasFreeBody(nn.Module):
    """Scales by the standard deviation around the mean but, as released, never subtracts it."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        return x / torch.sqrt(var + self.eps) * self.weight[None, :, None, None]

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same normalisation of a (..., C) tensor."""
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return x / torch.sqrt(var + self.eps) * self.weight


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (biased variance, eps 1e-5)."""

    def __init__(self, channels: int, kind: str = "WithBias", eps: float = 1e-5) -> None:
        super().__init__()
        if kind not in LAYER_NORM_TYPES:
            raise ValueError(f"LayerNorm type must be one of {LAYER_NORM_TYPES}, got {kind!r}")
        self.kind = kind
        self.body: _WithBiasBody | _BiasFreeBody = (
            _WithBiasBody(channels, eps) if kind == "WithBias" else _BiasFreeBody(channels, eps)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last axis of a channels-last (B, H, W, C) tensor: the fused CPU
        routes keep activations channels-last and would otherwise permute twice."""
        return self.body.forward_channels_last(x)
