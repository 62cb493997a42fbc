"""Torch datasets for training and validating restoration networks.

* ``PairedFolderDataset``: real pairs on disk, ``root/input/`` + ``root/target/`` with the
  same file names (the layout of Rain13K, SIDD patches and GoPro after the usual BasicSR
  preparation).
* ``SyntheticPairDataset``: crops of the clean pool (``service.data.pool``) degraded on the
  fly (``service.data.degrade``).
* ``fixed_validation_set``: a list of synthetic pairs that is identical for identical
  arguments, so validation curves are comparable across runs and resumptions.

All return ``(degraded, clean)`` float32 tensors (3, p, p) in [0, 1]. Randomness for item
``i`` comes only from ``numpy.random.default_rng([seed, epoch, i])``: items are reproducible
(resuming at any index gives the same samples), independent of DataLoader worker count, and
``set_epoch`` gives fresh crops each epoch. ``set_patch_size`` lets a trainer grow the patch
(progressive training) without rebuilding the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .degrade import TASKS, check_variant, degrade
from .pool import IMAGE_SUFFIXES

# Crops are degraded with this much context around them, then cut to the patch: blur kernels
# (radius <= 15 px) and rain streaks (half-length <= 20 px) at the patch border then come
# from real neighbouring content, not from padding or wrap-around.
CONTEXT = 24

# A crop is redrawn at most this many times in search of one above the detail floor; then the
# most detailed draw is kept, so a pool of flat images still trains (on its busiest crops).
DETAIL_TRIES = 8
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def crop_detail(image: np.ndarray) -> float:
    """Mean absolute step between neighbouring pixels' luma (Rec. 601), in [0, 1] units.

    A cheap measure of how much a crop can teach: a blur, a missing detail or a texture
    smeared by a denoiser changes nothing on a flat crop (sky, wall, gradient), so such crops
    give a deblurring or texture-preserving objective almost no gradient. ``image``: (H, W, 3)
    uint8 or float in [0, 1].
    """
    y = image.astype(np.float32) @ _LUMA
    if image.dtype == np.uint8:
        y /= np.float32(255.0)
    steps = [np.abs(np.diff(y, axis=a)).mean() for a in (0, 1) if y.shape[a] > 1]
    return float(np.mean(steps)) if steps else 0.0


def detailed_crop(draw: Callable[[], np.ndarray], floor: float, border: int = 0) -> np.ndarray:
    """``draw()`` until a crop's centre (``border`` px cut off each side) has
    ``crop_detail >= floor``; at most ``DETAIL_TRIES`` draws, else the most detailed one.

    ``floor`` 0 draws exactly once, so sets without a floor keep their random stream.
    """
    best, best_detail = None, -1.0
    for _ in range(DETAIL_TRIES if floor > 0 else 1):
        crop = draw()
        if floor <= 0:
            return crop
        h, w = crop.shape[:2]
        detail = crop_detail(crop[border : h - border, border : w - border])
        if detail >= floor:
            return crop
        if detail > best_detail:
            best, best_detail = crop, detail
    assert best is not None
    return best


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3); grey and alpha images are converted (alpha dropped)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _check_patch(patch_size: int) -> int:
    if int(patch_size) < 1:
        raise ValueError(f"patch size must be positive, got {patch_size}")
    return int(patch_size)


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad (H, W, C) so both sides are at least ``size``."""
    h, w = img.shape[:2]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return img
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)


def _dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations (k in 0..7) of an (H, W, C) array."""
    if k & 4:
        img = img[:, ::-1]
    return np.ascontiguousarray(np.rot90(img, k & 3, axes=(0, 1)))


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    arr = img.astype(np.float32) / np.float32(255.0) if img.dtype == np.uint8 else img
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


class _Seeded(Dataset):
    """Per-item generators from (seed, epoch, index), and a settable patch size."""

    def __init__(self, patch_size: int, seed: int) -> None:
        self.patch_size = _check_patch(patch_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_patch_size(self, patch_size: int) -> None:
        self.patch_size = _check_patch(patch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])


class PairedFolderDataset(_Seeded):
    """Aligned pairs from ``root/input/NAME`` and ``root/target/NAME``.

    Each item is a random ``patch_size`` crop at the same place in both images (images
    smaller than the patch are reflect-padded), then, with ``augment``, the same random
    flip/90-degree rotation. ``rotate=False`` keeps flips only (e.g. to keep rain vertical).
    """

    def __init__(
        self,
        root: str | Path,
        patch_size: int,
        augment: bool = True,
        seed: int = 0,
        *,
        rotate: bool = True,
    ) -> None:
        super().__init__(patch_size, seed)
        self.root = Path(root)
        self.augment = augment
        self.rotate = rotate
        in_dir, tgt_dir = self.root / "input", self.root / "target"
        for d in (in_dir, tgt_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{d} is not a folder (expected input/ and target/)")
        inputs = {p.name: p for p in list_images(in_dir)}
        targets = {p.name: p for p in list_images(tgt_dir)}
        if not inputs and not targets:
            raise ValueError(f"no images in {in_dir} or {tgt_dir}")
        only_in = sorted(set(inputs) - set(targets))
        only_tgt = sorted(set(targets) - set(inputs))
        if only_in or only_tgt:
            raise ValueError(
                f"input and target file names differ in {self.root}: "
                f"{len(only_in)} only in input/ (e.g. {only_in[:3]}), "
                f"{len(only_tgt)} only in target/ (e.g. {only_tgt[:3]})"
            )
        self.names = sorted(inputs)
        self.pairs = [(inputs[n], targets[n]) for n in self.names]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        in_path, tgt_path = self.pairs[index]
        x, y = load_rgb(in_path), load_rgb(tgt_path)
        if x.shape != y.shape:
            raise ValueError(f"{in_path.name}: input {x.shape[:2]} and target {y.shape[:2]} differ")
        rng = self.rng(index)
        p = self.patch_size
        x, y = _pad_to(x, p), _pad_to(y, p)
        h, w = x.shape[:2]
        top, left = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        x, y = x[top : top + p, left : left + p], y[top : top + p, left : left + p]
        if self.augment:
            k = int(rng.integers(0, 8)) if self.rotate else 4 * int(rng.integers(0, 2))
            x, y = _dihedral(x, k), _dihedral(y, k)
        return _to_tensor(x), _to_tensor(y)


class SyntheticPairDataset(_Seeded):
    """``length`` crops of the clean images in ``clean_dir``, degraded on the fly for ``task``.

    The images are loaded once (uint8, in memory). Item ``i`` picks an image (proportionally
    to its area, or ``i mod n`` with ``cycle_images``), crops ``patch_size`` plus context,
    applies a random flip/rotation to the *clean* crop (so rain still falls downwards),
    degrades it (``evaluation=True``: the fixed evaluation parameters) and cuts the context
    off again. Everything is drawn from ``rng([seed, epoch, i])``.

    ``clean_share`` of the items are identity pairs (the clean crop as its own input): a
    network that only ever sees degraded inputs learns to alter everything it is given, and a
    user who sends an already clean photo -- or one whose degradation is far lighter than the
    training generator's -- gets it back worse. ``variant``: one of the task's named training
    degradations (``degrade.VARIANTS``) instead of its default one.
    """

    def __init__(
        self,
        clean_dir: str | Path,
        task: str,
        patch_size: int,
        length: int,
        seed: int = 0,
        *,
        augment: bool = True,
        evaluation: bool = False,
        cycle_images: bool = False,
        clean_share: float = 0.0,
        variant: str | None = None,
        min_detail: float = 0.0,
    ) -> None:
        super().__init__(patch_size, seed)
        if not 0.0 <= clean_share < 1.0:
            raise ValueError(f"clean_share must be in [0, 1), got {clean_share}")
        if not 0.0 <= min_detail < 1.0:
            raise ValueError(f"min_detail must be in [0, 1), got {min_detail}")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if length < 1:
            raise ValueError("length must be at least 1")
        self.clean_dir = Path(clean_dir)
        if not self.clean_dir.is_dir():
            raise FileNotFoundError(f"{self.clean_dir} is not a folder")
        self.paths = list_images(self.clean_dir)
        if not self.paths:
            raise ValueError(f"no clean images in {self.clean_dir}")
        self.images = [load_rgb(p) for p in self.paths]
        areas = np.array([im.shape[0] * im.shape[1] for im in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.task = task
        self.length = int(length)
        self.augment = augment
        self.evaluation = evaluation
        self.cycle_images = cycle_images
        self.clean_share = float(clean_share)
        self.min_detail = float(min_detail)
        check_variant(task, variant)
        self.variant = variant

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self.rng(index)
        p, c = self.patch_size, CONTEXT

        def draw() -> np.ndarray:
            if self.cycle_images:
                image = self.images[index % len(self.images)]
            else:
                image = self.images[int(rng.choice(len(self.images), p=self.weights))]
            src = _pad_to(image, p + 2 * c)
            h, w = src.shape[:2]
            top = int(rng.integers(0, h - p - 2 * c + 1))
            left = int(rng.integers(0, w - p - 2 * c + 1))
            return src[top : top + p + 2 * c, left : left + p + 2 * c]

        crop = detailed_crop(draw, self.min_detail, border=c)
        if self.augment:
            crop = _dihedral(crop, int(rng.integers(0, 8)))
        clean = crop.astype(np.float32) / np.float32(255.0)
        if self.clean_share and rng.random() < self.clean_share:
            degraded = clean
        else:
            degraded = degrade(self.task, clean, rng, evaluation=self.evaluation,
                               variant=self.variant)
        return _to_tensor(degraded[c : c + p, c : c + p]), _to_tensor(clean[c : c + p, c : c + p])


def fixed_validation_set(
    clean_dir: str | Path, task: str, patch_size: int, count: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` (degraded, clean) pairs, identical for identical arguments.

    Cycles through the images (every held-out photo is represented), no augmentation, and
    the evaluation degradation parameters (denoising at sigma = 25/255).
    """
    ds = SyntheticPairDataset(clean_dir, task, patch_size, count, seed,
                              augment=False, evaluation=True, cycle_images=True)
    return [ds[i] for i in range(count)]
