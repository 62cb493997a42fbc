"""Conversion between decoded images and the network's (1, 3, H, W) float32 tensors."""

from __future__ import annotations

import numpy as np
import torch

from .decode import DecodedImage


def to_tensor(img: DecodedImage) -> torch.Tensor:
    """(1, 3, H, W) float32 CPU tensor in [0, 1]; a fresh, writable copy of ``img.rgb``."""
    chw = np.ascontiguousarray(img.rgb.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw).unsqueeze(0)


def from_tensor(t: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float32 numpy array clipped to [0, 1] from a (1, 3, H, W) or (3, H, W) tensor.

    Works for any device/dtype (moved to CPU float32). NaN is left as NaN on purpose, so that
    :func:`~service.imaging.encode.encode_image` refuses it instead of writing black pixels.
    """
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a batch of one image, got shape {tuple(t.shape)}")
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected (1, 3, H, W) or (3, H, W), got shape {tuple(t.shape)}")
    chw = t.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0)
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())
