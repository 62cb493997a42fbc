"""Connection-level limits for ``diffmamba serve``: a guarded uvicorn h11 protocol.

What uvicorn alone leaves open, and why each limit is here rather than in the app:

* **Request heads have no deadline.** uvicorn's keep-alive timer runs only *between*
  requests and every received byte cancels it, so a connection that sends nothing, or a
  header line one byte every few seconds (slow loris), is kept forever. Here a request line and
  headers must arrive within ``header_timeout_s`` of the connection opening or of the first byte
  of the next request -- a total, not an idle time, so trickling bytes does not extend it. A
  partial head then gets a JSON 408 and the connection is closed; a silent one is just closed.
* **Connections are not capped.** ``limit_concurrency`` answers a plain-text 503 only once a
  request arrives, which half-open connections never send. Here a connection over
  ``max_connections`` is answered a JSON 503 with ``Retry-After`` and closed at once.
* **A body the app did not read** (a 401, a 404) is discarded by uvicorn for as long as it
  keeps coming; here it must finish within ``body_timeout_s`` or the connection is closed.
* **Protocol errors** (malformed requests, headers over ``max_header_bytes``) are answered in
  the JSON error contract instead of plain text.

The body of a request the app *does* read is bounded by :mod:`service.api.timeouts`, which
works under any ASGI server. Keep-alive idle time is uvicorn's own ``timeout_keep_alive``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.security import CSP_API
from service.settings import Settings

logger = logging.getLogger("service.api.connection")
LOG_EVERY_S = 10.0  # refused connections are logged at most this often (a flood is one line)


def raw_error(status: int, reason: str, error: str, detail: str,
              extra: dict[str, str] | None = None) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 error response in the JSON contract, for the
    places where no request (and so no ASGI app) exists yet."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body)),
               "connection": "close", "x-content-type-options": "nosniff",
               "cache-control": "no-store", "content-security-policy": CSP_API, **(extra or {})}
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits above; subclassed per server by
    :func:`guarded_protocol`, which sets the class attributes from the settings."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 1000
    max_header_bytes: ClassVar[int] = 16384
    _refused: ClassVar[int] = 0
    _refused_logged: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard: Any = None  # asyncio.TimerHandle of the running deadline
        self._guard_kind: str | None = None

    # -- deadlines ---------------------------------------------------------------------------
    def _arm(self, kind: str, seconds: float) -> None:
        self._disarm()
        self._guard_kind = kind
        self._guard = self.loop.call_later(seconds, self._expired, kind)

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
        self._guard, self._guard_kind = None, None

    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _discarding_body(self) -> bool:
        return (self.cycle is not None and self.cycle.response_complete
                and self.conn.their_state is h11.SEND_BODY)

    def _update_guard(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self._disarm()
        elif self._waiting_for_head():
            if self._guard_kind != "head":
                self._arm("head", self.header_timeout_s)
        elif self._discarding_body():
            if self._guard_kind != "body":
                self._arm("body", self.body_timeout_s)
        else:
            self._disarm()

    def _expired(self, kind: str) -> None:
        self._guard, self._guard_kind = None, None
        if self.transport.is_closing():
            return
        if kind == "head" and self._waiting_for_head() and self.conn.trailing_data[0]:
            self._write_and_close(raw_error(
                408, "Request Timeout", "request_timeout",
                f"the request line and headers did not arrive within {self.header_timeout_s:g} s"))
            return
        self.transport.close()

    def _write_and_close(self, response: bytes) -> None:
        self._disarm()
        self.transport.write(response)
        self.transport.close()

    # -- uvicorn hooks -----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse_connection()
            return
        self._arm("head", self.header_timeout_s)

    def _refuse_connection(self) -> None:
        cls = type(self)
        cls._refused += 1
        now = time.monotonic()
        if now - cls._refused_logged >= LOG_EVERY_S:
            logger.warning("refused %d connection(s) over max_connections=%d", cls._refused,
                           self.max_connections)
            cls._refused, cls._refused_logged = 0, now
        self._write_and_close(raw_error(
            503, "Service Unavailable", "too_many_connections",
            f"the server has {self.max_connections} open connections; retry shortly",
            {"retry-after": "1"}))

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_head():
            if self._guard is None:
                self._arm("head", self.header_timeout_s)  # first byte of the next request
            if self._head_too_large(data):
                self._write_and_close(self._headers_too_large())
                return
        super().data_received(data)
        self._update_guard()

    def _head_too_large(self, data: bytes) -> bool:
        """h11 caps only a head still incomplete in its buffer; one that arrives whole in a
        single read passes, whatever its size. Measure up to the blank line ourselves."""
        buffered = self.conn.trailing_data[0] + data
        end = buffered.find(b"\r\n\r\n")
        return (end + 4 if end >= 0 else len(buffered)) > self.max_header_bytes

    def _headers_too_large(self) -> bytes:
        return raw_error(431, "Request Header Fields Too Large", "headers_too_large",
                         f"the request line and headers are over {self.max_header_bytes} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # Between requests uvicorn's keep-alive timer is the deadline; ours resumes with the
        # next byte (data_received), or now if a pipelined request or an unread body is due.
        self._disarm()
        super().on_response_complete()
        if not self._waiting_for_head() or self.conn.trailing_data[0]:
            self._update_guard()

    def send_400_response(self, msg: str) -> None:
        if len(self.conn.trailing_data[0]) > self.max_header_bytes:
            response = self._headers_too_large()
        else:
            response = raw_error(400, "Bad Request", "invalid_http",
                                 "the request is not valid HTTP/1.1")
        self._write_and_close(response)


def guarded_protocol(settings: Settings) -> type[GuardedH11Protocol]:
    """A protocol class carrying ``settings``' limits (uvicorn instantiates it per connection)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": settings.header_timeout_s,
        "body_timeout_s": settings.body_timeout_s,
        "max_connections": settings.max_connections,
        "max_header_bytes": settings.max_header_bytes,
        "_refused": 0, "_refused_logged": 0.0,
    })


def server_config(app: Any, settings: Settings, host: str, port: int,
                  log_level: str, **extra: Any) -> uvicorn.Config:
    """The uvicorn configuration ``diffmamba serve`` runs with: the guarded protocol, the
    keep-alive idle time and the header size limit from ``settings``."""
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, http=guarded_protocol(settings),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=settings.max_header_bytes, **extra,
    )
