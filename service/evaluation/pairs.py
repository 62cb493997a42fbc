"""Evaluation pairs (degraded input, clean target): a folder on disk, or a seeded synthetic set.

Synthetic set (the default): scikit-image's sample photographs (``evaluation_images()``, never
in the training pool), image ``i`` degraded by ``degrade(task, clean, rng, evaluation=True)``
with ``rng = np.random.default_rng(seed + i)``, ``i`` being its index in ``EVALUATION_NAMES``
(so ``limit`` does not change the images it keeps). Denoising is then AWGN at sigma = 25/255;
rain and blur parameters are drawn from the seeded rng. The same seed always gives the same
pairs, on any machine.

``size`` takes a centre crop of at most ``size`` x ``size`` (a side shorter than ``size`` is
kept whole). Synthetic images are degraded at full size *before* cropping: the crop sees no
padding effects at its borders, and is exactly a window of the full-size evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Pair", "center_crop", "folder_pairs", "synthetic_pairs"]


@dataclass(frozen=True, eq=False)
class Pair:
    """float32 (H, W, 3) images in [0, 1]; the clean one ``scale`` times the degraded one's
    height and width (1: one shape; 4: a super-resolution LR/HR pair)."""

    name: str
    degraded: np.ndarray
    clean: np.ndarray
    scale: int = 1

    def __post_init__(self) -> None:
        h, w, *rest = self.degraded.shape
        if (h * self.scale, w * self.scale, *rest) != self.clean.shape:
            what = "differ" if self.scale == 1 else f"are not x{self.scale} apart"
            raise ValueError(
                f"{self.name}: degraded {self.degraded.shape} and clean {self.clean.shape} {what}"
            )


def center_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    """The central ``size`` x ``size`` window (sides shorter than ``size`` kept whole)."""
    if size is None:
        return image
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = image.shape[:2]
    ch, cw = min(h, size), min(w, size)
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(image[top : top + ch, left : left + cw])


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def synthetic_pairs(
    task: str,
    seed: int = 0,
    size: int | None = None,
    limit: int | None = None,
    images: dict[str, np.ndarray] | None = None,
) -> list[Pair]:
    """Degrade the clean ``images`` (default: the scikit-image evaluation photos) for ``task``."""
    from service.data.degrade import degrade
    from service.data.evaluation import evaluation_images

    _check_limit(limit)
    if images is None:
        images = evaluation_images()
    pairs = []
    for index, (name, clean) in enumerate(images.items()):
        if limit is not None and index >= limit:
            break
        degraded = degrade(task, clean, np.random.default_rng(seed + index), evaluation=True)
        pairs.append(Pair(name, center_crop(degraded, size), center_crop(clean, size)))
    return pairs


def folder_pairs(root: str | Path, size: int | None = None, limit: int | None = None) -> list[Pair]:
    """Pairs from ``root/input/NAME`` and ``root/target/NAME`` (the training layout).

    The file-name checks are ``PairedFolderDataset``'s; images load as 8-bit RGB.
    """
    from service.data.datasets import PairedFolderDataset, load_rgb

    _check_limit(limit)
    dataset = PairedFolderDataset(root, patch_size=1, augment=False)
    pairs = []
    for name, (in_path, tgt_path) in zip(dataset.names, dataset.pairs, strict=True):
        if limit is not None and len(pairs) >= limit:
            break
        x, y = load_rgb(in_path), load_rgb(tgt_path)
        if x.shape != y.shape:
            raise ValueError(f"{name}: input {x.shape[:2]} and target {y.shape[:2]} differ")
        x = x.astype(np.float32) / np.float32(255.0)
        y = y.astype(np.float32) / np.float32(255.0)
        pairs.append(Pair(name, center_crop(x, size), center_crop(y, size)))
    return pairs
