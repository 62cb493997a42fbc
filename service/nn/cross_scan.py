"""The four scan orders of a 2-D feature map and their inverse (VMamba's cross-scan/merge).

k=0 row-major, k=1 column-major, k=2 reversed row-major, k=3 reversed column-major. The order
matters: every direction has its own parameters in the checkpoints.
"""

from __future__ import annotations

import torch


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, H*W)."""
    b, d, h, w = x.shape
    row = x.reshape(b, d, h * w)
    col = x.transpose(2, 3).reshape(b, d, h * w)
    pair = torch.stack([row, col], dim=1)
    return torch.cat([pair, pair.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4, D, L) outputs of the four directions -> (B, D, L) in row-major order, summed."""
    b, _, d, length = y.shape
    backward = y[:, 2:4].flip(-1)
    row = y[:, 0] + backward[:, 0]
    col = y[:, 1] + backward[:, 1]
    col = col.reshape(b, d, width, height).transpose(2, 3).reshape(b, d, length)
    return row + col
