"""Encoding restored float RGB back into the same kind of image the client sent.

The output keeps the input's width, height and mode family, because a restoration service
should hand back "the same picture, cleaned", not a different kind of file:

* grayscale stays grayscale -- the network's RGB is reduced with ITU-R BT.601 luma weights
  (0.299, 0.587, 0.114; the weights Pillow's ``convert("L")`` uses), which leaves a gray
  image (R = G = B) unchanged;
* the alpha channel is copied from the input untouched (bit-exact), never from the network;
* 16-bit grayscale stays 16-bit (``I;16``) in PNG and TIFF. 16-bit *colour* never reaches
  here at 16 bits (Pillow decodes it at 8), so colour output is always 8 bits per channel;
* quantisation rounds to nearest (``rint``), never truncates, so decode -> encode of an
  untouched image is lossless in PNG/TIFF/lossless WebP.

Memory: the float input is the largest thing alive while encoding (12 bytes per pixel), so the
checks and the quantisation run in row strips straight into the Pillow image being saved; their
float temporaries are a strip, not an image. What the encoder adds to the input is Pillow's image
(1, 2 or 4 bytes per pixel), the compressed bytes and a strip, whatever the image's size.

Format limitations, by design: JPEG has no alpha (it is dropped) and no 16 bits; WebP has no
grayscale (gray is written as R = G = B) and no 16 bits; BMP is not written (``fmt=None`` on a
BMP input answers PNG). JPEG is written with 4:4:4 chroma (no subsampling) because chroma
subsampling would blur back the colour edges the network just restored. WebP is lossy at
``quality`` unless ``lossless=True``. Metadata other than a matching ICC profile (EXIF, XMP,
text chunks) is not carried over: EXIF orientation was already applied to the pixels.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any, Final

import numpy as np
from PIL import Image, features

from .decode import DecodedImage
from .errors import UnsupportedFormat
from .formats import (
    DEFAULT_OUTPUT_FORMAT,
    SUPPORTED_OUTPUT_FORMATS,
    media_type_for,
    normalize_format,
)

_BT601: Final = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MAX_SIDE: Final[dict[str, int]] = {"JPEG": 65_535, "WEBP": 16_383}
_ICC_SPACE: Final = slice(16, 20)
STRIP_PIXELS: Final = 1 << 16
"""Pixels per row strip of checking and quantising (a 768 kB float32 RGB strip)."""


def output_format_for(like: DecodedImage, fmt: str | None = None) -> str:
    """The canonical output format: ``fmt`` if given, else the input's format when writable,
    else PNG (e.g. for BMP input). Raises :class:`UnsupportedFormat` for an unknown ``fmt``."""
    if fmt is not None:
        return normalize_format(fmt)
    return like.format if like.format in SUPPORTED_OUTPUT_FORMATS else DEFAULT_OUTPUT_FORMAT


def check_encodable(like: DecodedImage, fmt: str | None = None, *, scale: int = 1,
                    choices: Sequence[str] = SUPPORTED_OUTPUT_FORMATS) -> str:
    """The output format for ``like`` restored at ``scale``; raises :class:`UnsupportedFormat`
    when the image would not fit it (WebP: 16383 px per side, JPEG: 65535).

    Callers run it before the restoration, so an impossible request fails in milliseconds
    rather than after the compute; ``choices`` are the formats the caller can ask for (the
    API's ``format`` values), the only ones the message suggests.
    """
    target = output_format_for(like, fmt)
    width, height = like.width * scale, like.height * scale
    limit = _MAX_SIDE.get(target)
    if limit is not None and max(width, height) > limit:
        fits = [c.lower() for c in choices
                if _MAX_SIDE.get(normalize_format(c), max(width, height)) >= max(width, height)]
        hint = f"; use {' or '.join(fits)}" if fits else ""
        raise UnsupportedFormat(
            f"{target} cannot store a {width}x{height} image "
            f"(at most {limit} pixels per side){hint}"
        )
    return target


def encode_image(
    rgb: np.ndarray,
    like: DecodedImage,
    fmt: str | None = None,
    *,
    quality: int = 95,
    lossless: bool = False,
) -> tuple[bytes, str]:
    """Encode float RGB (H, W, 3) in [0, 1] like ``like``; returns ``(data, media_type)``.

    ``fmt`` is "png", "jpeg"/"jpg", "webp" or "tiff"/"tif" (any case); ``None`` picks
    :func:`output_format_for`. ``quality`` (1-100) applies to JPEG and lossy WebP;
    ``lossless`` selects lossless WebP (PNG and TIFF are always lossless; JPEG cannot be).

    Raises :class:`UnsupportedFormat` (422) for an unknown format or an image too large for
    it, ``ValueError`` for a wrong shape, non-finite values or a bad quality.
    """
    target = check_encodable(like, fmt)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if lossless and target == "JPEG":
        raise UnsupportedFormat("JPEG cannot be written losslessly; use png, tiff or webp")
    _check_pixels(rgb, like)
    image = _build_image(rgb, like, target)
    options = _save_options(target, quality, lossless, _matching_icc(like, image.mode))
    buffer = io.BytesIO()
    image.save(buffer, target, **options)
    return buffer.getvalue(), media_type_for(target)


def _check_pixels(rgb: np.ndarray, like: DecodedImage) -> None:
    if not isinstance(rgb, np.ndarray) or not np.issubdtype(rgb.dtype, np.floating):
        raise ValueError("rgb must be a floating-point numpy array (H, W, 3) in [0, 1]")
    expected = (like.height, like.width, 3)
    if rgb.shape != expected:
        raise ValueError(f"rgb has shape {rgb.shape}, expected {expected} like the input")
    for rows in _row_strips(*rgb.shape[:2]):
        if not np.isfinite(rgb[rows]).all():
            raise ValueError("rgb contains NaN or infinite values")


def _row_strips(height: int, width: int) -> Iterator[slice]:
    """Row ranges covering ``height`` with about ``STRIP_PIXELS`` pixels each."""
    rows = max(1, STRIP_PIXELS // max(1, width))
    for start in range(0, height, rows):
        yield slice(start, min(height, start + rows))


def _quantize(values: np.ndarray, bits: int) -> np.ndarray:
    """Round (not truncate) [0, 1] floats to 8- or 16-bit integers; element by element, so a
    strip quantises exactly as the whole image would."""
    scale, dtype = (255, np.uint8) if bits == 8 else (65_535, np.uint16)
    clipped = np.clip(values.astype(np.float32, copy=False), 0.0, 1.0)
    return np.rint(clipped * np.float32(scale), out=clipped).astype(dtype)


def _output_mode(like: DecodedImage, target: str) -> tuple[str, bool]:
    """The Pillow mode written (L / I;16 / LA / RGB / RGBA, as the input and format allow) and
    whether the input's alpha is kept."""
    keep_alpha = like.alpha is not None and target != "JPEG"
    if like.grayscale:
        if like.bit_depth == 16 and target in ("PNG", "TIFF") and not keep_alpha:
            return "I;16", False
        # WebP has no grayscale mode: the luma is written as R = G = B.
        base = "L" if target != "WEBP" else "RGB"
    else:
        base = "RGB"
    if keep_alpha:
        return ("LA" if base == "L" else "RGBA"), True
    return base, False


def _build_image(rgb: np.ndarray, like: DecodedImage, target: str) -> Image.Image:
    """The Pillow image to save, filled strip by strip (see the module's docstring)."""
    mode, keep_alpha = _output_mode(like, target)
    height, width = rgb.shape[:2]
    image = Image.new(mode, (width, height))
    for rows in _row_strips(height, width):
        if like.grayscale:
            luma = rgb[rows].astype(np.float32, copy=False) @ _BT601
            planes = [_quantize(luma, 16 if mode == "I;16" else 8)]
            if mode in ("RGB", "RGBA"):
                planes = planes * 3
        else:
            rgb8 = _quantize(rgb[rows], 8)
            if not keep_alpha:
                image.paste(Image.fromarray(rgb8), (0, rows.start))
                continue
            planes = [rgb8[:, :, 0], rgb8[:, :, 1], rgb8[:, :, 2]]
        if keep_alpha:
            assert like.alpha is not None
            planes.append(like.alpha[rows])
        strip = planes[0] if len(planes) == 1 else np.stack(planes, axis=2)
        image.paste(Image.fromarray(strip), (0, rows.start))
    return image


def _matching_icc(like: DecodedImage, mode: str) -> bytes | None:
    """The input's ICC profile, only if it describes the colour family being written."""
    profile = like.icc_profile
    if not profile:
        return None
    wanted = b"RGB " if mode in ("RGB", "RGBA") else b"GRAY"
    return profile if profile[_ICC_SPACE] == wanted else None


def _save_options(target: str, quality: int, lossless: bool, icc: bytes | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if target == "JPEG":
        options.update(quality=quality, subsampling="4:4:4")
    elif target == "WEBP":
        # exact: keep RGB under fully transparent pixels instead of letting libwebp rewrite it
        options.update(quality=quality, lossless=lossless, exact=True, method=4)
    elif target == "TIFF" and features.check_codec("libtiff"):
        options.update(compression="tiff_adobe_deflate")
    elif target == "PNG":
        options.update(compress_level=6)
    if icc is not None:
        options["icc_profile"] = icc
    return options
