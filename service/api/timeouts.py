"""Request-body read timeout and minimum upload rate, at the ASGI level.

An ASGI server hands the body to the app only when the app asks (``receive``), and neither
uvicorn nor Starlette bounds how long that wait may take: a client that declares a
``Content-Length`` and sends less, or trickles one byte every few seconds, holds a request,
a connection and an upload buffer forever. This middleware bounds every ``receive`` that waits
for body bytes, so the limit holds under any ASGI server (plain ``uvicorn`` included):

* no body bytes for ``body_timeout_s`` -> 408 ``request_timeout``;
* after a grace of ``body_timeout_s``, the upload must average ``min_upload_rate`` bytes/s
  over the time spent *waiting for the client* (time the app spends elsewhere between reads is
  not the client's fault) -> 408 ``upload_too_slow``.

The 408 is raised as an :class:`~service.api.errors.ApiError` out of ``receive``, so it travels
the app's normal error path (the endpoint records its status, the handler answers JSON) and
carries ``Connection: close``: the rest of that body is never read. Once the body is complete,
later ``receive`` calls (waiting for a disconnect) are not bounded.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import ApiError

CLOSE = {"Connection": "close"}


class BodyTimeout(ApiError):
    def __init__(self, error: str, detail: str) -> None:
        super().__init__(408, error, detail, dict(CLOSE))


class _GuardedReceive:
    def __init__(self, receive: Receive, idle_s: float, min_rate: float) -> None:
        self.receive, self.idle_s, self.min_rate = receive, idle_s, min_rate
        self.received = 0
        self.waited = 0.0
        self.done = False

    async def __call__(self) -> Message:
        if self.done:
            return await self.receive()
        budget = self.idle_s
        if self.min_rate > 0:  # the wait that would take the average below the minimum
            budget = min(budget, self.idle_s + self.received / self.min_rate - self.waited)
        if budget <= 0:
            raise self._too_slow()
        start = time.monotonic()
        try:
            message = await asyncio.wait_for(self.receive(), timeout=budget)
        except asyncio.TimeoutError:
            self.waited += time.monotonic() - start
            if budget < self.idle_s:
                raise self._too_slow() from None
            raise BodyTimeout(
                "request_timeout",
                f"no request body data for {self.idle_s:g} s after {self.received} byte(s); "
                "send the whole body (as declared in Content-Length) without pausing") from None
        self.waited += time.monotonic() - start
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
        else:
            self.done = True
        return message

    def _too_slow(self) -> BodyTimeout:
        rate = self.received / self.waited if self.waited else 0.0
        return BodyTimeout(
            "upload_too_slow",
            f"the upload averaged {rate:.0f} bytes/s, below the minimum of "
            f"{self.min_rate:g} bytes/s")


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, body_timeout_s: float, min_upload_rate: float) -> None:
        self.app, self.idle_s, self.min_rate = app, body_timeout_s, min_upload_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, _GuardedReceive(receive, self.idle_s, self.min_rate), send)
