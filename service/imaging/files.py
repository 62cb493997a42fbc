"""File helpers for the CLI: the same strict decode/encode, bounded before reading."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .decode import DecodedImage, decode_image
from .encode import encode_image
from .errors import ImageTooLarge
from .formats import format_for_path


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
    output_scale: int = 1,
) -> DecodedImage:
    """Decode an image file. ``max_bytes`` is checked on the file size before reading it;
    ``max_pixels`` as in :func:`decode_image`, for the input and its ×``output_scale`` output.

    File-system errors (missing file, permissions) propagate as ``OSError``.
    """
    path = Path(path)
    if max_bytes is not None:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLarge(f"{path} is {size:,} bytes, over the limit of {max_bytes:,} bytes")
    return decode_image(path.read_bytes(), max_pixels=max_pixels, max_bytes=max_bytes,
                        output_scale=output_scale)


def write_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    like: DecodedImage,
    fmt: str | None = None,
    *,
    quality: int = 95,
    lossless: bool = False,
) -> Path:
    """Encode ``rgb`` like ``like`` and write it to ``path``; returns the path.

    ``fmt`` defaults from the suffix (.png, .jpg/.jpeg, .webp, .tif/.tiff); an unknown suffix
    raises :class:`~service.imaging.errors.UnsupportedFormat`. The file is written to a
    temporary sibling and renamed into place, so a failure never leaves a half-written image.
    """
    path = Path(path)
    data, _ = encode_image(
        rgb,
        like,
        fmt if fmt is not None else format_for_path(path),
        quality=quality,
        lossless=lossless,
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
