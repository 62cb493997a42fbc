"""LR/HR crop pairs for ×4 super-resolution training, drawn from the clean pool.

Item ``i`` is a pure function of (seed, epoch, i) like the restoration datasets (resumable
batches): an HR crop of ``patch_size`` (a multiple of the scale), a random flip/rotation, and
its LR input from the chosen generator (Real-ESRGAN's second-order chain by default, or
bicubic). A ``clean_share`` of the pairs get the plain bicubic LR instead, the SR counterpart of
the restoration sets' identity pairs: a network that only ever saw degraded LR learns to smooth
away detail that a clean photo's LR still carries. Crops are taken from images scaled by a
random factor in [0.5, 1] first, so the network sees textures at more than one size.
``min_detail`` redraws HR crops flatter than it, as in ``SyntheticPairDataset``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from service.data.datasets import detailed_crop, list_images, load_rgb
from service.data.degrade.second_order import LR_GENERATORS, SCALE, resize


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def scaled_crop(photo: np.ndarray, scaled: tuple[int, int], corner: tuple[int, int],
                size: int) -> np.ndarray:
    """The ``size``² crop at ``corner`` of uint8 ``photo`` bicubic-resized to ``scaled``, in [0, 1].

    Only the source region under the crop (plus the filter's reach) is converted and resized:
    the same pixels as resizing the whole photo and cropping, at a fraction of the cost — the
    crop is redrawn up to ``datasets.DETAIL_TRIES`` times per item under a detail floor.
    """
    (h, w), (sh, sw), (top, left) = photo.shape[:2], scaled, corner
    if (sh, sw) == (h, w):
        return photo[top : top + size, left : left + size].astype(np.float32) / 255
    fy, fx = h / sh, w / sw
    y0, x0, y1, x1 = top * fy, left * fx, (top + size) * fy, (left + size) * fx
    # bicubic reaches 2 output pixels each side, i.e. 2 * scale source pixels when shrinking
    reach = int(np.ceil(2 * max(fy, fx, 1.0))) + 2
    r0, c0 = max(0, int(y0) - reach), max(0, int(x0) - reach)
    r1, c1 = min(h, int(np.ceil(y1)) + reach), min(w, int(np.ceil(x1)) + reach)
    region = photo[r0:r1, c0:c1].astype(np.float32) / 255
    return resize(region, size, size, box=(x0 - c0, y0 - r0, x1 - c0, y1 - r0))


class SRPairDataset(Dataset):
    """``length`` (LR (3, p/s, p/s), HR (3, p, p)) pairs in [0, 1] from ``clean_dir``."""

    def __init__(self, clean_dir: str | Path, patch_size: int, length: int, seed: int = 0, *,
                 scale: int = SCALE, degradation: str = "second-order",
                 augment: bool = True, clean_share: float = 0.0,
                 min_detail: float = 0.0) -> None:
        if not 0 <= clean_share < 1:
            raise ValueError(f"clean_share must be in [0, 1), got {clean_share}")
        if not 0 <= min_detail < 1:
            raise ValueError(f"min_detail must be in [0, 1), got {min_detail}")
        if degradation not in LR_GENERATORS:
            raise ValueError(f"unknown degradation {degradation!r}; "
                             f"expected one of {', '.join(LR_GENERATORS)}")
        if length < 1:
            raise ValueError("length must be at least 1")
        self.clean_dir = Path(clean_dir)
        if not self.clean_dir.is_dir():
            raise FileNotFoundError(f"{self.clean_dir} is not a folder")
        self.images = [load_rgb(p) for p in list_images(self.clean_dir)]
        if not self.images:
            raise ValueError(f"no clean images in {self.clean_dir}")
        self.scale, self.length, self.seed = int(scale), int(length), int(seed)
        self.degradation, self.augment = degradation, augment
        self.clean_share = float(clean_share)
        self.min_detail = float(min_detail)
        self.epoch = 0
        self.set_patch_size(patch_size)

    def set_patch_size(self, patch_size: int) -> None:
        if patch_size < self.scale or patch_size % self.scale:
            raise ValueError(f"SR patch size must be a positive multiple of {self.scale}, "
                             f"got {patch_size}")
        self.patch_size = int(patch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        p = self.patch_size

        def draw() -> np.ndarray:
            photo = self.images[int(rng.integers(len(self.images)))]
            h, w = photo.shape[:2]
            factor = rng.uniform(0.5, 1.0)
            sh, sw = max(p, round(h * factor)), max(p, round(w * factor))
            top, left = int(rng.integers(0, sh - p + 1)), int(rng.integers(0, sw - p + 1))
            return scaled_crop(photo, (sh, sw), (top, left), p)

        hr = detailed_crop(draw, self.min_detail)
        if self.augment:
            k = int(rng.integers(0, 8))
            hr = np.rot90(hr[:, ::-1] if k & 4 else hr, k & 3, axes=(0, 1))
        hr = np.round(np.ascontiguousarray(hr) * 255) / np.float32(255)
        # drawn only when asked for, so a set without clean pairs keeps its random stream
        clean = self.clean_share > 0 and rng.random() < self.clean_share
        lr = LR_GENERATORS["bicubic" if clean else self.degradation](hr, rng, self.scale)
        return _to_tensor(np.asarray(lr)), _to_tensor(hr)
