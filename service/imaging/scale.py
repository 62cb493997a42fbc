"""What an upscaled output is encoded like: the input's mode family, its alpha resized too.

A ×s model restores the colour planes only; the alpha plane is resized separately (Lanczos,
as Pillow resizes 8-bit planes) so the output keeps the input's transparency at its size instead
of a plane that no longer fits. Grayscale, bit depth, format and ICC profile carry over: the
encoder reduces the network's RGB to luma for gray inputs and keeps 16 bits where it can.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from .decode import DecodedImage


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """(H, W) uint8 -> (sH, sW) uint8, Lanczos."""
    h, w = alpha.shape
    resized = Image.fromarray(alpha).resize((w * scale, h * scale), Image.Resampling.LANCZOS)
    out = np.asarray(resized, dtype=np.uint8).copy()
    out.setflags(write=False)
    return out


def scaled_like(like: DecodedImage, scale: int) -> DecodedImage:
    """``like`` at ``scale`` × its size, for :func:`encode_image`; ``scale`` 1 returns it.

    Its ``rgb`` is a zero-cost placeholder of the new shape (broadcast, read-only): the encoder
    takes the pixels from the network and only the shape, mode and alpha from here.
    """
    if scale == 1:
        return like
    if scale < 1:
        raise ValueError(f"scale must be positive, got {scale}")
    shape = (like.height * scale, like.width * scale, 3)
    placeholder = np.broadcast_to(np.zeros((1, 1, 3), dtype=np.float32), shape)
    alpha = None if like.alpha is None else upscale_alpha(like.alpha, scale)
    return dataclasses.replace(like, rgb=placeholder, alpha=alpha)
