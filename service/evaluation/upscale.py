"""Classical ×s upscalers: what a super-resolution network has to beat.

Bicubic is the convention SR papers score the input with (the LR image brought to the HR grid);
Lanczos (a = 3) is the sharper classical resampler. Both resample in float per channel, so no
8-bit rounding enters before the metrics' own.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from service.data.degrade.second_order import SCALE, resize


def _up(lr: np.ndarray, scale: int, resample: Image.Resampling) -> np.ndarray:
    h, w = lr.shape[:2]
    return resize(np.asarray(lr, dtype=np.float32), h * scale, w * scale, resample)


def bicubic_up(lr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    return _up(lr, scale, Image.Resampling.BICUBIC)


def lanczos_up(lr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    return _up(lr, scale, Image.Resampling.LANCZOS)
