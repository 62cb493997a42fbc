"""What the sync and async clients share: request building, retry policy, SSE parsing.

No I/O here, so the two clients differ only in ``await``.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.client.errors import ServiceError, error_for

logger = logging.getLogger("service.client")

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_RETRIES = 3
BACKOFF_S, BACKOFF_MAX_S = 0.5, 8.0
RETRY_AFTER_MAX_S = 60.0  # a longer Retry-After is cut to this per wait
RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE"})
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
          (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"), (b"BM", "image/bmp"))

ImageInput = bytes | bytearray | memoryview | str | os.PathLike | Any
"""Encoded image bytes, a path to an image file, or a PIL image."""


@dataclass
class Job:
    """A submitted job: ``id`` for ``status`` / ``wait`` / ``events`` / ``cancel``."""

    id: str
    state: str
    status: dict[str, Any] = field(repr=False)
    location: str = ""


def job_id_of(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else str(job)


def image_body(image: ImageInput) -> tuple[bytes, str]:
    """(bytes, Content-Type) of what ``restore`` / ``submit`` were given."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        data = Path(image).read_bytes()
    elif hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image: sent as PNG
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
    else:
        raise TypeError(f"image: bytes, a path or a PIL image, got {type(image).__name__}")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "image/webp"
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return data, media_type
    return data, "application/octet-stream"


def restore_params(task: str, steps: int | None, seed: int | None, format: str | None,
                   tile: int | None, **extra: Any) -> dict[str, Any]:
    given = {"task": task, "steps": steps, "seed": seed, "format": format, "tile": tile, **extra}
    return {k: v for k, v in given.items() if v is not None}


def headers_for(api_key: str | None) -> dict[str, str]:
    from service import __version__

    headers = {"User-Agent": f"diffmamba-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def timeout_for(timeout: float | None) -> httpx.Timeout:
    if timeout is None:
        return httpx.Timeout(None)
    return httpx.Timeout(timeout, connect=min(timeout, 10.0))


def retry_delay(attempt: int, error: ServiceError | None) -> float:
    """The wait before retry ``attempt`` (0-based): the server's Retry-After when it gave one,
    else exponential backoff."""
    if error is not None and error.retry_after is not None:
        return min(error.retry_after, RETRY_AFTER_MAX_S)
    return min(BACKOFF_S * 2**attempt, BACKOFF_MAX_S)


def should_retry_transport(method: str, exc: httpx.TransportError) -> bool:
    """Connection failures were never processed, so any request may be sent again; other
    transport errors only for idempotent methods."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) or method in IDEMPOTENT


def transport_error(exc: httpx.TransportError) -> ServiceError:
    from service.client.errors import Timeout, Unavailable

    if isinstance(exc, httpx.TimeoutException):
        return Timeout(None, "client_timeout", f"no answer in time: {type(exc).__name__}")
    return Unavailable(None, "connection_failed", f"{type(exc).__name__}: {exc}")


def error_of(response: httpx.Response) -> ServiceError:
    """The typed error of a non-2xx answer (its body must have been read)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return error_for(response.status_code, body, response.headers.get("retry-after"))


def check(response: httpx.Response) -> httpx.Response:
    """``response`` if 2xx, else raise its typed error."""
    if response.is_success:
        return response
    raise error_of(response)


def log_retry(method: str, url: str, delay: float, why: str) -> None:
    logger.info("%s %s: %s; retrying in %.2f s", method, url, why, delay)


class SSEDecoder:
    """Server-sent event lines -> ``{"event": name, **data}`` per event; comments (the
    server's heartbeats) skipped."""

    def __init__(self) -> None:
        self.event, self.data = "message", []

    def feed(self, line: str) -> dict[str, Any] | None:
        if not line:
            out = {"event": self.event, **json.loads("\n".join(self.data))} if self.data else None
            self.event, self.data = "message", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None
