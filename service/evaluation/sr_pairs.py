"""Seeded ×4 super-resolution pairs from the evaluation photos, for either LR generator.

``bicubic`` is the classic SISR benchmark setting; ``second-order`` is Real-ESRGAN's chain
(blur, resize, noise, JPEG, twice), the inputs a real-world SR model is trained for. The HR
target is the centre crop, trimmed to a multiple of the scale so the LR grid is exact.
"""

from __future__ import annotations

import numpy as np

from service.data.degrade.second_order import LR_GENERATORS, SCALE
from service.evaluation.pairs import Pair, center_crop

SR_DEGRADATIONS: tuple[str, ...] = tuple(LR_GENERATORS)


def sr_pairs(
    degradation: str,
    seed: int = 0,
    size: int | None = None,
    limit: int | None = None,
    images: dict[str, np.ndarray] | None = None,
    scale: int = SCALE,
) -> list[Pair]:
    """LR/HR pairs; image i draws its degradation from ``seed + i``."""
    from service.data.evaluation import evaluation_images

    if degradation not in LR_GENERATORS:
        raise ValueError(f"unknown SR degradation {degradation!r}; "
                         f"expected one of {', '.join(SR_DEGRADATIONS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if images is None:
        images = evaluation_images()
    pairs = []
    for index, (name, clean) in enumerate(images.items()):
        if limit is not None and index >= limit:
            break
        hr = center_crop(clean, size)
        h, w = hr.shape[:2]
        hr = np.ascontiguousarray(hr[: h - h % scale, : w - w % scale], dtype=np.float32)
        rng = np.random.default_rng(seed + index)
        lr = np.round(LR_GENERATORS[degradation](hr, rng, scale) * 255) / np.float32(255)
        pairs.append(Pair(name, lr.astype(np.float32), hr, scale=scale))
    return pairs
