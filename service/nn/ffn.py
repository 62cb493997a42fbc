"""Gated depthwise-conv feed-forward (Restormer's GDFN; Diff-Mamba's DFNN, VmambaIR's EFFN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def ffn_hidden_features(channels: int, expansion: float) -> int:
    """Hidden width as the releases compute it: truncation, not rounding (48 * 2.66 -> 127)."""
    return int(channels * expansion)


class GatedDConvFeedForward(nn.Module):
    def __init__(self, channels: int, expansion: float = 2.66, bias: bool = True) -> None:
        super().__init__()
        hidden = ffn_hidden_features(channels, expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(
            hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias
        )
        self.project_out = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)
