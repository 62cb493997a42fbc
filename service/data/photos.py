"""How an allow-listed photograph is stored in its package, and how to open it.

Most are plain image files. Some packages keep theirs elsewhere, and each way needs its own
reader so the pool can still use them:

* inside a Qt resource bundle (``member`` of the ``.rcc`` at ``path``; GCompris);
* as a raw array rather than an image file (``array``): ``npz:KEY`` for a NumPy ``.npz``
  (read with ``allow_pickle=False``, so a package file can never run code), or
  ``bz2-raw:HxWxC`` for bzip2-compressed uint8 pixels (SciPy's ``face.dat``).

``short_side`` caps the size below the pool's own for sources compressed so hard that
their full resolution shows smeared texture: shrinking averages the artefacts away.
"""

from __future__ import annotations

import bz2
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .rcc import RccError, ResourceBundle

_RAW = re.compile(r"^bz2-raw:(\d+)x(\d+)x([134])$")


class PhotoError(ValueError):
    """A photo that cannot be read as its allow-list entry says."""


@dataclass(frozen=True)
class Photo:
    """One allow-list entry: where the photo is inside the package root."""

    path: str
    member: str | None = None
    array: str | None = None
    short_side: int | None = None

    def __post_init__(self) -> None:
        if self.member is not None and self.array is not None:
            raise ValueError("a photo is either a bundle member or an array, not both")
        if self.array is not None and not (
            (self.array.startswith("npz:") and len(self.array) > 4) or _RAW.match(self.array)
        ):
            raise ValueError(f"unknown array format {self.array!r} (npz:KEY or bz2-raw:HxWxC)")
        if self.short_side is not None and self.short_side < 64:
            raise ValueError("a photo's short side cap must be at least 64 px")

    @property
    def source(self) -> str:
        """The path as recorded in the manifest (``bundle.rcc::/member`` for members)."""
        return f"{self.path}::{self.member}" if self.member else self.path

    def names(self) -> tuple[str, ...]:
        return (self.path,) if self.member is None else (self.path, self.member)


def as_photo(entry: str | Photo) -> Photo:
    return entry if isinstance(entry, Photo) else Photo(entry)


@lru_cache(maxsize=4)
def _bundle(path: str) -> ResourceBundle:
    return ResourceBundle.open(path)


def photo_present(path: Path, photo: Photo) -> bool:
    """True when the file at ``path`` (and the bundle member, if any) exists."""
    if not path.is_file():
        return False
    if photo.member is None:
        return True
    try:
        return photo.member in _bundle(str(path)).names()
    except (RccError, OSError):
        return False


def _decode_array(path: Path, fmt: str) -> np.ndarray:
    if fmt.startswith("npz:"):
        key = fmt[4:]
        with np.load(path, allow_pickle=False) as npz:
            if key not in npz:
                raise PhotoError(f"{path.name} has no array {key!r} (has {sorted(npz)})")
            arr = npz[key]
    else:
        m = _RAW.match(fmt)
        assert m is not None  # checked in Photo
        shape = tuple(int(g) for g in m.groups())
        raw = bz2.decompress(path.read_bytes())
        if len(raw) != int(np.prod(shape)):
            raise PhotoError(f"{path.name}: {len(raw)} bytes, not {'x'.join(m.groups())}")
        arr = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise PhotoError(f"{path.name}: expected uint8 pixels, got {arr.dtype} {arr.shape}")
    return arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


def open_photo(path: Path, photo: Photo) -> Image.Image:
    """The photo stored as ``photo`` says in the file at ``path``, loaded, and turned
    upright by its EXIF orientation if it has one."""
    try:
        if photo.array is not None:
            return Image.fromarray(_decode_array(path, photo.array))
        if photo.member is not None:
            image = Image.open(io.BytesIO(_bundle(str(path)).read(photo.member)))
        else:
            image = Image.open(path)
        image.load()
    except (OSError, ValueError, RccError) as exc:
        raise PhotoError(f"cannot read {photo.source}: {exc}") from exc
    return ImageOps.exif_transpose(image)
