"""Errors raised by the imaging layer, each carrying the HTTP answer it maps to.

The CLI and the HTTP API share this layer, so every failure caused by the *input* (bad bytes,
an unsupported format, an image that is too large, an output format nobody can write) is an
:class:`ImageError`: the API turns ``status``/``error``/``detail`` into its response without
a lookup table of its own, and the CLI prints ``detail``. Programming errors (wrong array
shapes, NaN from the model) stay plain ``ValueError``/``TypeError`` so they surface as 500s.
"""

from __future__ import annotations

from typing import ClassVar


class ImageError(Exception):
    """Base class: an image request that cannot be served, and how to answer it.

    ``status`` is the HTTP status code, ``error`` a short stable machine-readable code and
    ``detail`` a human-readable sentence naming the problem (also the ``str()`` of the error).
    """

    status: ClassVar[int] = 400
    error: ClassVar[str] = "image_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail

    def to_dict(self) -> dict[str, str]:
        """The JSON body the API answers with: ``{"error": ..., "detail": ...}``."""
        return {"error": self.error, "detail": self.detail}


class InvalidImage(ImageError):
    """The bytes are not a decodable image: empty, garbage, truncated or corrupt."""

    status = 400
    error = "invalid_image"


class UnsupportedImage(ImageError):
    """A real image, but in a format or colour mode this service does not accept."""

    status = 415
    error = "unsupported_image"


class ImageTooLarge(ImageError):
    """The payload or the declared pixel count exceeds the configured limits."""

    status = 413
    error = "image_too_large"


class UnsupportedFormat(ImageError, ValueError):
    """An *output* format that cannot be written (unknown name, or the image does not fit it).

    Also a ``ValueError`` because it is usually a bad argument (``?format=gif``, ``out.gif``).
    """

    status = 422
    error = "unsupported_format"
