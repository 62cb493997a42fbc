"""Format names, aliases, media types and file suffixes.

Formats are named the way Pillow names them ("PNG", "JPEG", "WEBP", "TIFF", "BMP"); user input
("jpg", "Tif", ".png") goes through :func:`normalize_format` first.
"""

from __future__ import annotations

import os
from typing import Final

from .errors import UnsupportedFormat

SUPPORTED_INPUT_FORMATS: Final[tuple[str, ...]] = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
"""Formats :func:`~service.imaging.decode.decode_image` accepts (MPO camera JPEGs count as JPEG)."""

SUPPORTED_OUTPUT_FORMATS: Final[tuple[str, ...]] = ("PNG", "JPEG", "WEBP", "TIFF")
"""Formats :func:`~service.imaging.encode.encode_image` writes. BMP is read-only: it has no
compression and no 16-bit grayscale, so BMP inputs are answered as PNG."""

DEFAULT_OUTPUT_FORMAT: Final = "PNG"

_ALIASES: Final[dict[str, str]] = {
    "png": "PNG",
    "jpeg": "JPEG",
    "jpg": "JPEG",
    "jpe": "JPEG",
    "webp": "WEBP",
    "tiff": "TIFF",
    "tif": "TIFF",
    "bmp": "BMP",
}

_MEDIA_TYPES: Final[dict[str, str]] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
}

_SUFFIXES: Final[dict[str, str]] = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "WEBP": ".webp",
    "TIFF": ".tif",
    "BMP": ".bmp",
}


def _canonical(fmt: str) -> str | None:
    return _ALIASES.get(fmt.strip().lstrip(".").lower())


def normalize_format(fmt: str) -> str:
    """Canonical name of an *output* format: ``"jpg"`` -> ``"JPEG"``, ``".Tif"`` -> ``"TIFF"``.

    Raises :class:`UnsupportedFormat` (422) for anything that cannot be written, BMP included.
    """
    name = _canonical(fmt)
    if name not in SUPPORTED_OUTPUT_FORMATS:
        choices = ", ".join(f.lower() for f in SUPPORTED_OUTPUT_FORMATS)
        raise UnsupportedFormat(f"output format {fmt!r} is not supported; choose one of {choices}")
    return name


def media_type_for(fmt: str) -> str:
    """The media type (``Content-Type``) of an input or output format, aliases accepted."""
    name = _canonical(fmt)
    if name is None:
        raise UnsupportedFormat(f"no media type known for image format {fmt!r}")
    return _MEDIA_TYPES[name]


def suffix_for(fmt: str) -> str:
    """The conventional file suffix of an output format (``"JPEG"`` -> ``".jpg"``)."""
    return _SUFFIXES[normalize_format(fmt)]


def format_for_path(path: str | os.PathLike[str]) -> str:
    """The output format a path's suffix asks for (``out.JPG`` -> ``"JPEG"``).

    Raises :class:`UnsupportedFormat` when the suffix is missing or not writable.
    """
    suffix = os.path.splitext(os.fspath(path))[1]
    if not suffix:
        raise UnsupportedFormat(
            f"cannot infer an image format from {os.fspath(path)!r}: it has no suffix"
        )
    return normalize_format(suffix)
