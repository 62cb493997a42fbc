"""Reading an upload's pixel size and depth from its header, before anything is decoded.

Why here and not in the decoder: memory admission must decide before decoding, and what it
needs (width, height, whether the pixels are 8-bit) is in the first bytes of the file. The file
is identified the way ``service.imaging.decode`` identifies it (Pillow's header parsers of the
supported formats only, no pixel data read); anything it cannot read returns None and is left to
the decoder, whose errors are the ones clients see.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from service.imaging.formats import SUPPORTED_INPUT_FORMATS

_PREFIX_LEN = 16
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    format: str
    mode: str

    @property
    def eight_bit(self) -> bool:
        """Decoded at 8 bits per channel (16-bit colour is reduced to 8 by Pillow itself)."""
        return self.mode not in _WIDE_MODES


def read_header(data: bytes) -> ImageHeader | None:
    """The header of a supported image, or None (garbage, other formats, broken headers)."""
    prefix = bytes(data[:_PREFIX_LEN])
    for fmt in SUPPORTED_INPUT_FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None:
            continue
        try:
            verdict = accept(prefix) if accept is not None else True
            if isinstance(verdict, str):  # recognised, but this Pillow cannot decode it
                return None
            if not verdict:
                continue
            with factory(io.BytesIO(data), "") as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    return None
                return ImageHeader(int(width), int(height), fmt, image.mode)
        except Exception:  # the decoder will name the problem
            return None
    return None
