"""Typed errors of the client, parsed from the service's ``{"error", "detail"}`` bodies.

Callers branch on the class (``except Unavailable``) and read ``.status`` (None when no HTTP
answer came: a connection failure or a client-side timeout), ``.error`` (the service's code,
e.g. ``queue_full``) and ``.detail`` (its message).
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    def __init__(self, status: int | None, error: str, detail: str,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status or '-'} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail
        #: Seconds the server asked to wait (503, 429), if it said.
        self.retry_after = retry_after


class InvalidRequest(ServiceError):
    """4xx for the request itself: bad image or parameter, too large, unsupported type."""


class Unauthorized(ServiceError):
    """401 / 403: a missing, wrong or insufficient API key."""


class NotFound(ServiceError):
    """404: unknown task, or a job that is unknown, expired or evicted."""


class Conflict(ServiceError):
    """409: e.g. the result of a job that has not succeeded."""


class RateLimited(ServiceError):
    """429, after the retries: too many requests for this key."""


class Unavailable(ServiceError):
    """503 after the retries (loading, queue full, draining), or no connection at all."""


class Timeout(ServiceError):
    """504 from the service, or no answer within the client's timeout."""


class ServerError(ServiceError):
    """Any other 5xx (500 inference_failed, ...)."""


class JobFailed(ServiceError):
    """``wait`` on a job that failed: ``.error`` / ``.detail`` are the job's own."""


class JobCancelled(JobFailed):
    """``wait`` on a job that was cancelled."""


_BY_STATUS: dict[int, type[ServiceError]] = {
    401: Unauthorized, 403: Unauthorized, 404: NotFound, 410: NotFound, 409: Conflict,
    429: RateLimited, 503: Unavailable, 504: Timeout,
}


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (``"5"``) or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import datetime

    now = datetime.datetime.now(when.tzinfo or datetime.timezone.utc)
    return max(0.0, (when - now).total_seconds())


def error_for(status: int, body: Any, retry_after: str | None = None) -> ServiceError:
    """The typed error for an HTTP answer; ``body`` is the parsed JSON (or anything else)."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error, detail = body["error"], str(body.get("detail", ""))
    else:
        error, detail = "http_error", (body if isinstance(body, str) else "")[:500]
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else InvalidRequest
    return cls(status, error, detail, parse_retry_after(retry_after))
