"""Image decode/encode layer shared by the CLI and the HTTP API.

``decode_image`` turns untrusted bytes into float RGB in [0, 1] (strictly, with size limits
checked before decoding); ``encode_image`` writes the restored RGB back in the input's size,
mode family, alpha and bit depth. Every input-caused failure is an :class:`ImageError` that
carries its HTTP ``status``, a machine ``error`` code and a human ``detail``.
"""

from .decode import DecodedImage, decode_image
from .encode import check_encodable, encode_image, output_format_for
from .errors import ImageError, ImageTooLarge, InvalidImage, UnsupportedFormat, UnsupportedImage
from .files import read_image, write_image
from .formats import (
    DEFAULT_OUTPUT_FORMAT,
    SUPPORTED_INPUT_FORMATS,
    SUPPORTED_OUTPUT_FORMATS,
    format_for_path,
    media_type_for,
    normalize_format,
    suffix_for,
)
from .scale import scaled_like, upscale_alpha
from .tensor import from_tensor, to_tensor

__all__ = [
    "DEFAULT_OUTPUT_FORMAT",
    "SUPPORTED_INPUT_FORMATS",
    "SUPPORTED_OUTPUT_FORMATS",
    "DecodedImage",
    "ImageError",
    "ImageTooLarge",
    "InvalidImage",
    "UnsupportedFormat",
    "UnsupportedImage",
    "check_encodable",
    "decode_image",
    "encode_image",
    "format_for_path",
    "from_tensor",
    "media_type_for",
    "normalize_format",
    "output_format_for",
    "read_image",
    "scaled_like",
    "suffix_for",
    "to_tensor",
    "upscale_alpha",
    "write_image",
]
