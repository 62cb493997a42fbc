"""Held-out evaluation photographs: scikit-image's bundled sample images.

They ship inside the scikit-image wheel (no download at run time) and are never part of
the training pool, so PSNR/SSIM on them measures generalisation to unseen photos. Install
with the ``train`` extra (``pip install diffmamba-service[train]``); the import is lazy so
serving never needs scikit-image.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

# skimage.data function -> our name. Natural photographs only (no microscopy, astronomy,
# binary or synthetic images); grey ones are replicated to RGB.
EVALUATION_SOURCES: dict[str, str] = {
    "astronaut": "astronaut",
    "camera": "camera",
    "chelsea": "chelsea",
    "coffee": "coffee",
    "motorcycle": "stereo_motorcycle",
    "rocket": "rocket",
}
EVALUATION_NAMES: tuple[str, ...] = tuple(EVALUATION_SOURCES)


def _load(func_name: str) -> np.ndarray:
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "evaluation images need scikit-image: pip install 'diffmamba-service[train]'"
        ) from exc
    image = getattr(data, func_name)()
    if isinstance(image, tuple):  # stereo_motorcycle -> (left, right, disparity)
        image = image[0]
    return np.asarray(image)


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 grey/RGB/RGBA -> float32 (H, W, 3) in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def evaluation_images(names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Name -> float32 (H, W, 3) in [0, 1], in ``EVALUATION_NAMES`` order."""
    chosen = EVALUATION_NAMES if names is None else names
    unknown = [n for n in chosen if n not in EVALUATION_SOURCES]
    if unknown:
        raise ValueError(f"unknown evaluation images {unknown}; known: {EVALUATION_NAMES}")
    return {name: to_float_rgb(_load(EVALUATION_SOURCES[name])) for name in chosen}


def folder_images(folder: str | Path) -> dict[str, np.ndarray]:
    """Clean photos of ``folder`` (file stem -> float32 (H, W, 3)), sorted by name: the grid
    on other photos than scikit-image's, e.g. a pool's held-out ``val`` split. ValueError when
    the folder is missing or holds no image."""
    from service.data.datasets import list_images, load_rgb

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--photos {folder}: not a folder")
    paths = list_images(root)
    if not paths:
        raise ValueError(f"--photos {folder}: no images (.png, .jpg, ...) in it")
    images = {}
    for path in paths:
        try:
            images[path.stem] = to_float_rgb(load_rgb(path))
        except OSError as exc:
            raise ValueError(f"--photos {path}: not a readable image ({exc})") from exc
    return images


def fingerprint(image: np.ndarray, size: int = 16) -> np.ndarray:
    """A tiny zero-mean, unit-norm grey thumbnail, to spot the same photo at another size."""
    from PIL import Image

    arr = to_float_rgb(image)
    grey = Image.fromarray((arr.mean(axis=2) * 255.0).round().astype(np.uint8))
    thumb = np.asarray(grey.resize((size, size), Image.BILINEAR), dtype=np.float64)
    thumb -= thumb.mean()
    return thumb.ravel() / max(float(np.linalg.norm(thumb)), 1e-9)


def matches_evaluation_image(image: np.ndarray, threshold: float = 0.97) -> str | None:
    """The name of the evaluation image ``image`` looks like, or None.

    Compares aspect ratio and the correlation of 16x16 thumbnails; needs scikit-image.
    """
    h, w = np.asarray(image).shape[:2]
    fp = fingerprint(image)
    for name, aspect, ref in _evaluation_fingerprints():
        if abs(w / h - aspect) < 0.02 and float(fp @ ref) > threshold:
            return name
    return None


@lru_cache(maxsize=1)
def _evaluation_fingerprints() -> tuple[tuple[str, float, np.ndarray], ...]:
    return tuple(
        (name, img.shape[1] / img.shape[0], fingerprint(img))
        for name, img in evaluation_images().items()
    )
