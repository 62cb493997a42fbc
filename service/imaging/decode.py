"""Strict, bounded decoding of untrusted image bytes into float RGB for the network.

Why it is written this way:

* **Limits before pixels.** The byte size is checked before Pillow sees the data, and the
  width x height from the header is checked before any pixel data is decoded, so a 60-byte PNG
  declaring 30000x30000 pixels costs nothing.
* **Per-call pixel limit without global state.** ``Image.open`` enforces the process-wide
  ``Image.MAX_IMAGE_PIXELS``; changing that per request would race between the API's worker
  threads (and affect every other user of Pillow in the process). Instead the file is identified
  with Pillow's own plugin registry (``Image.OPEN``: each format's magic-number test and
  header parser, the very thing ``Image.open`` runs) and the size is checked against this call's
  ``max_pixels``. ``max_pixels=None`` means Pillow's current ``MAX_IMAGE_PIXELS`` (about 89.5
  MP by default), so bomb protection is never off by accident. Should any Pillow code path
  still consult the global (MPO frame seeks, crops), its ``DecompressionBombError``/``Warning``
  becomes :class:`ImageTooLarge` too.
* **Only our parsers run.** A file whose magic number belongs to another format (GIF, ICO,
  PSD, ...) is rejected with :class:`UnsupportedImage` from its signature alone; its parser
  never runs, which keeps the attack surface to the five formats we serve.
* **Corruption is an error.** Every PNG chunk's CRC is checked before Pillow parses the file:
  Pillow verifies the CRCs of the chunks it interprets itself but streams IDAT (the pixels)
  straight to zlib without them, so a flipped bit in the image data would decode to wrong
  pixels instead of being refused. CRC-32 runs at memory speed, negligible next to a decode.
* **Truncation is an error.** The pixels are fully ``load()``-ed here, with Pillow's default
  ``ImageFile.LOAD_TRUNCATED_IMAGES = False`` (this module never changes it; if someone sets
  it to True a warning is emitted, because truncated files would then decode with grey fill).
* **Every Pillow failure is the input's fault.** Pillow's parsers raise an undocumented mix of
  ``OSError``, ``SyntaxError``, ``ValueError``, ``struct.error``, ``EOFError``, ``IndexError``,
  ``KeyError``, ``zlib.error``...; anything raised while Pillow parses untrusted bytes becomes
  :class:`InvalidImage` (``MemoryError`` becomes :class:`ImageTooLarge`). Our own numpy code
  runs outside that net so real bugs still surface.

Decisions (documented limitations):

* Multi-frame files (animated WebP/PNG, multi-page TIFF, MPO) decode their **first frame**.
* EXIF orientation is applied (the pixels are rotated; the output carries no EXIF). Unreadable
  EXIF is ignored rather than rejecting a decodable picture.
* Palette images become RGB (or RGBA with transparency); "1" becomes 8-bit grayscale.
* CMYK is converted to sRGB through its embedded ICC profile when LittleCMS can, else with
  Pillow's naive formula; the CMYK profile is dropped.
* 16-bit *colour* PNG/TIFF (and 16-bit gray+alpha PNG) are reduced to 8 bits by Pillow itself,
  so they decode with ``bit_depth == 8``. 16-bit grayscale keeps 16 bits. Mode "I" (32-bit int)
  is read on the 16-bit scale, clipped to [0, 65535]; mode "F" (float TIFF) is clipped to
  [0, 1] (NaN -> 0) and treated as 16-bit grayscale.
* Only an ICC profile matching the decoded colour family (GRAY / RGB) is kept.
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import ImageError, ImageTooLarge, InvalidImage, UnsupportedImage
from .formats import SUPPORTED_INPUT_FORMATS

# Register every plugin now, at import, so identification never triggers lazy plugin imports
# from several worker threads at once and sees the full registry for naming unsupported files.
Image.init()

_PREFIX_LEN: Final = 16  # what Image.open hands to each plugin's magic-number test
_ORIENTATION_TAG: Final = 0x0112
_GRAY16_MODES: Final = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_ICC_SPACE: Final = slice(16, 20)  # ICC header: data colour space signature


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded image, ready for the network, plus what is needed to encode it back alike.

    ``rgb`` is float32 (H, W, 3) in [0, 1] (grayscale replicated to three channels).
    ``alpha`` is the untouched alpha channel as uint8 (H, W) -- kept as integers rather than
    floats so that it round-trips bit-exactly (Pillow decodes every alpha channel at 8 bits),
    or ``None``. ``bit_depth`` (8 or 16) is the precision the pixels were decoded with and the
    one PNG/TIFF output keeps. ``format`` is the container ("PNG", "JPEG", "WEBP", "TIFF",
    "BMP"); ``mode`` the Pillow mode of the source ("P", "I;16", "CMYK", ...).
    Arrays produced by :func:`decode_image` are read-only: one decode may be shared.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    grayscale: bool
    bit_depth: int
    format: str
    mode: str
    icc_profile: bytes | None = None

    def __post_init__(self) -> None:
        rgb = self.rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.float32:
            raise ValueError(f"rgb must be float32 (H, W, 3), got {rgb.dtype} {rgb.shape}")
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise ValueError(f"rgb must not be empty, got shape {rgb.shape}")
        if self.alpha is not None and (
            self.alpha.dtype != np.uint8 or self.alpha.shape != rgb.shape[:2]
        ):
            raise ValueError(
                f"alpha must be uint8 {rgb.shape[:2]}, got {self.alpha.dtype} {self.alpha.shape}"
            )
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth}")

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
    output_scale: int = 1,
) -> DecodedImage:
    """Decode PNG/JPEG/WebP/TIFF/BMP bytes into a :class:`DecodedImage`.

    ``max_bytes`` bounds the payload (``None``: no byte limit); ``max_pixels`` bounds
    width x height as declared by the header, checked before decoding (``None``: Pillow's
    ``Image.MAX_IMAGE_PIXELS``, or unlimited if that is ``None``). A given ``max_pixels`` also
    bounds the restored image of ``output_scale`` times the width and height (a ×4 model), so
    an output too large to produce is refused before any pixel is decoded either.

    Raises :class:`InvalidImage` (400) for empty, garbage, truncated or corrupt data,
    :class:`UnsupportedImage` (415) for other image formats or colour modes and
    :class:`ImageTooLarge` (413) when a limit is exceeded. Thread-safe.
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"decode_image() needs bytes, got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise InvalidImage("the image data is empty (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise ImageTooLarge(f"the image is {size:,} bytes, over the limit of {max_bytes:,} bytes")
    limit = _pixel_limit(max_pixels)
    if output_scale < 1:
        raise ValueError(f"output_scale must be positive, got {output_scale}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated images "
            "will decode with grey fill instead of being rejected",
            RuntimeWarning,
            stacklevel=2,
        )

    image, fmt = _identify(bytes(data))
    with image:
        _check_dimensions(image.size, limit, fmt)
        if max_pixels is not None:
            _check_dimensions(image.size, max_pixels, fmt, output_scale)
        if fmt == "PNG":
            _check_png_chunks(data)
        source_mode = image.mode
        gray_alpha = _is_png_gray_alpha(image, fmt)
        with _pillow_errors(f"the {fmt} image"):
            image.load()
            oriented = _apply_exif_orientation(image)
            normalized = _normalize_mode(oriented, source_mode)
        return _to_decoded(normalized, fmt, source_mode, gray_alpha)


def _pixel_limit(max_pixels: int | None) -> int | None:
    if max_pixels is None:
        return Image.MAX_IMAGE_PIXELS
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    return max_pixels


@contextmanager
def _pillow_errors(what: str) -> Iterator[None]:
    """Translate whatever Pillow raises on hostile bytes into an :class:`ImageError`."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{what} is too large (decompression bomb check): {exc}") from exc
    except MemoryError as exc:
        raise ImageTooLarge(f"{what} is too large to decode in the available memory") from exc
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, ValueError) and "too large" in reason.lower():
            # e.g. PNG text chunks that decompress past Pillow's MAX_TEXT_CHUNK
            raise ImageTooLarge(f"{what} is too large: {reason}") from exc
        raise InvalidImage(f"{what} is corrupt or truncated: {reason}") from exc


def _identify(data: bytes) -> tuple[ImageFile.ImageFile, str]:
    """Open the header with the matching supported plugin, like ``Image.open`` but without
    its global decompression-bomb check (ours follows, with this call's limit)."""
    prefix = data[:_PREFIX_LEN]
    for fmt in SUPPORTED_INPUT_FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None:
            continue
        verdict = accept(prefix) if accept is not None else True
        if isinstance(verdict, str):  # "recognised, but Pillow was built without support"
            raise UnsupportedImage(f"{fmt} images cannot be decoded on this server: {verdict}")
        if verdict:
            with _pillow_errors(f"the {fmt} data"):
                return factory(io.BytesIO(data), ""), fmt
    other = _sniff_other_format(prefix)
    accepted = ", ".join(SUPPORTED_INPUT_FORMATS)
    if other is not None:
        raise UnsupportedImage(f"{other} images are not supported; send one of {accepted}")
    raise InvalidImage(f"the data is not a recognisable image (expected one of {accepted})")


def _sniff_other_format(prefix: bytes) -> str | None:
    """Name the unsupported format whose magic number matches, without running its parser.

    Formats without a signature test (TGA, ...) are not guessed: garbage stays "invalid".
    """
    for fmt in Image.ID:
        if fmt in SUPPORTED_INPUT_FORMATS:
            continue
        _, accept = Image.OPEN[fmt]
        if accept is None:
            continue
        try:
            if accept(prefix):
                return fmt
        except Exception:
            continue
    return None


def _check_dimensions(size: tuple[int, int], limit: int | None, fmt: str,
                      output_scale: int = 1) -> None:
    """The one pixel-limit check: the header's size and the output a ×s model would make."""
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the {fmt} header declares an empty image ({width}x{height})")
    pixels = width * height
    if limit is not None and pixels > limit:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {pixels:,} pixels, over the limit of {limit:,} pixels"
        )
    out_w, out_h = width * output_scale, height * output_scale
    if limit is not None and out_w * out_h > limit:
        raise ImageTooLarge(
            f"the ×{output_scale} output of this {width}x{height} image would be "
            f"{out_w}x{out_h} = {out_w * out_h:,} pixels, over the limit of {limit:,} pixels"
        )


_PNG_SIGNATURE_LEN: Final = 8


def _check_png_chunks(data: bytes | bytearray) -> None:
    """Walk the chunks from the signature to IEND: each complete, each CRC right."""
    view = memoryview(data)
    pos, end = _PNG_SIGNATURE_LEN, len(data)
    while True:
        if pos + 12 > end:
            raise InvalidImage(f"the PNG data is truncated: no IEND chunk by byte {end:,}")
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8])
        crc_at = pos + 8 + length
        name = kind.decode("latin-1") if kind.isalpha() else repr(kind)
        if length > 0x7FFF_FFFF or crc_at + 4 > end:
            raise InvalidImage(f"the PNG data is truncated inside its {name} chunk at byte {pos:,}")
        if zlib.crc32(view[pos + 4:crc_at]) != int.from_bytes(view[crc_at:crc_at + 4], "big"):
            raise InvalidImage(f"the PNG data is corrupt: CRC mismatch in its {name} chunk "
                               f"at byte {pos:,}")
        if kind == b"IEND":
            return
        pos = crc_at + 4


def _is_png_gray_alpha(image: Image.Image, fmt: str) -> bool:
    """16-bit gray+alpha PNGs are delivered by Pillow as 8-bit RGBA; remember they were gray."""
    if fmt != "PNG" or image.mode != "RGBA" or not image.tile:
        return False
    return image.tile[0][3] == "LA;16B"


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF: keep the stored orientation rather than reject
        return image
    if orientation not in range(2, 9):
        return image
    return ImageOps.exif_transpose(image)


def _has_transparency(image: Image.Image) -> bool:
    if "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _normalize_mode(image: Image.Image, source_mode: str) -> Image.Image:
    """Bring any supported Pillow mode to L, LA, RGB, RGBA or a 16-bit/int/float gray mode."""
    mode = image.mode
    if mode in _GRAY16_MODES or mode in ("I", "F"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode == "L":
        return image.convert("LA") if _has_transparency(image) else image
    if mode in ("LA", "RGBA"):
        return image
    if mode == "La":
        return image.convert("LA")
    if mode in ("P", "PA"):
        keep_alpha = mode == "PA" or _has_transparency(image)
        return image.convert("RGBA" if keep_alpha else "RGB")
    if mode == "RGB":
        return image.convert("RGBA") if _has_transparency(image) else image
    if mode == "RGBa":
        return image.convert("RGBA")
    if mode in ("RGBX", "YCbCr"):
        return image.convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    raise UnsupportedImage(f"the {source_mode} colour mode is not supported")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK -> sRGB through the embedded profile if possible (print CMYK is far from the
    naive ``255 - C - K``), falling back to Pillow's naive conversion."""
    profile = image.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            converted = ImageCms.profileToProfile(
                image,
                ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                ImageCms.createProfile("sRGB"),
                outputMode="RGB",
            )
            if converted is not None:
                return converted
        except Exception:  # no LittleCMS, or a broken / mismatched profile
            pass
    return image.convert("RGB")


def _to_decoded(image: Image.Image, fmt: str, source_mode: str, gray_alpha: bool) -> DecodedImage:
    """Arrays from a normalized image: 8-bit L/LA/RGB/RGBA or 16-bit/int/float gray."""
    mode = image.mode
    alpha: np.ndarray | None = None
    if mode in _GRAY16_MODES or mode == "I":
        raw = np.asarray(image)
        gray = np.clip(raw, 0, 65535).astype(np.float32) / np.float32(65535)
        alpha = _colour_key_alpha(raw, image.info.get("transparency"))
        bit_depth = 16
    elif mode == "F":
        gray = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0), 0.0, 1.0)
        bit_depth = 16
    else:
        pixels = np.asarray(image)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.shape[2] in (2, 4):
            alpha = np.ascontiguousarray(pixels[:, :, -1])
            pixels = pixels[:, :, :-1]
        if gray_alpha:
            pixels = pixels[:, :, :1]
        values = pixels.astype(np.float32) / np.float32(255)
        if values.shape[2] == 3:
            return _freeze(values, alpha, False, 8, fmt, source_mode, image)
        gray, bit_depth = values[:, :, 0], 8
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    return _freeze(rgb, alpha, True, bit_depth, fmt, source_mode, image)


def _colour_key_alpha(raw: np.ndarray, key: object) -> np.ndarray | None:
    """Alpha for a gray image with a single transparent value (PNG tRNS on 16-bit gray)."""
    if not isinstance(key, int):
        return None
    return np.where(raw == key, 0, 255).astype(np.uint8)


def _freeze(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    grayscale: bool,
    bit_depth: int,
    fmt: str,
    source_mode: str,
    image: Image.Image,
) -> DecodedImage:
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    rgb.setflags(write=False)
    if alpha is not None:
        alpha.setflags(write=False)
    profile = image.info.get("icc_profile")
    wanted = b"GRAY" if grayscale else b"RGB "
    if not isinstance(profile, bytes) or profile[_ICC_SPACE] != wanted:
        profile = None
    return DecodedImage(
        rgb=rgb,
        alpha=alpha,
        grayscale=grayscale,
        bit_depth=bit_depth,
        format=fmt,
        mode=source_mode,
        icc_profile=profile,
    )
