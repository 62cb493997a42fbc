"""Graceful drain: on SIGTERM stop being ready, finish what was accepted, then exit 0.

Plain uvicorn closes its listening socket as soon as SIGTERM arrives, so a load balancer or
kubelet polling ``/readyz`` would see connection errors instead of a clean 503, and uvicorn
re-raises the signal afterwards, so the process dies "killed by SIGTERM" rather than exiting 0.
:class:`DrainingServer` changes the first signal into a drain:

1. ``state.draining`` is set at once: ``/readyz`` answers 503 and new ``POST /restore`` get 503
   ``draining`` with ``Retry-After`` (the client retries on another replica);
2. the server keeps listening while requests already accepted (counted by
   :class:`InFlightMiddleware`) run to completion, up to ``drain_timeout_s``;
3. then it shuts down as uvicorn normally does and the process exits with status 0.

A second SIGTERM/SIGINT during the drain exits at once (uvicorn's ``force_exit``).

Requests still running when ``drain_timeout_s`` runs out are cancelled by the server and
answered JSON 503 ``draining`` with ``Retry-After`` (by :class:`InFlightMiddleware`), so the
client can retry elsewhere; left to uvicorn they would be cancelled later and get its
plain-text ``Internal Server Error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.connection import server_config
from service.api.errors import error_response
from service.api.state import ServiceState

logger = logging.getLogger("service.api.drain")

# Probes and scrapes never hold a drain open: they keep arriving while it runs.
UNTRACKED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# After the drain, uvicorn's own wait for open connections; short because the requests that
# mattered are done by now (or the drain timeout has already been spent on them).
SHUTDOWN_GRACE_S = 2.0
# The cancel message of requests cut off by the drain timeout (InFlightMiddleware answers them).
DRAIN_TIMEOUT_CANCEL = "diffmamba: drain timeout"


class InFlightMiddleware:
    """Counts HTTP requests from arrival to the last byte of their response on ``state``, and
    answers a request cancelled before its response started (the drain timeout, or a server
    shutting down) with JSON 503 ``draining`` rather than nothing or a plain-text 500; a
    streamed response cut off by the drain timeout is ended rather than broken.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``) so that it sees the whole response,
    including a streamed body, and adds no task or buffering per request.
    """

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = scope.get("path") not in UNTRACKED_PATHS
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        if tracked:
            self.state.in_flight += 1
        try:
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError as exc:
            ours = exc.args == (DRAIN_TIMEOUT_CANCEL,)
            with contextlib.suppress(Exception):
                if not started:
                    await error_response(
                        503, "draining", "the server is shutting down before this request "
                        "could finish; retry on another replica", {"Retry-After": "1"},
                    )(scope, receive, send)
                elif ours:  # a stream (server-sent events) in progress: end it cleanly
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            task = asyncio.current_task()
            if not ours or task is None or not hasattr(task, "uncancel"):
                raise
            task.uncancel()  # our own cancel, answered: end the request normally
        finally:
            if tracked:
                self.state.in_flight -= 1


class DrainingServer(uvicorn.Server):
    """A ``uvicorn.Server`` whose first SIGTERM/SIGINT drains instead of closing the socket."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.state = state
        self._last_report = 0.0
        self._cut_off_at: float | None = None  # when the drain timeout cancelled requests

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: only set flags here, the loop acts on them.
        if self.state.drain_deadline is not None or self.should_exit:
            logger.warning("second %s: exiting now, %d request(s) still in flight",
                           signal.Signals(sig).name, self.state.in_flight)
            self._captured_signals.append(sig)  # uvicorn re-raises it: a forced exit, not 0
            self.should_exit = self.force_exit = True
            return
        self.begin_drain(signal.Signals(sig).name)

    def begin_drain(self, reason: str = "drain requested") -> None:
        """Stop being ready now; ``on_tick`` ends the server once nothing is in flight."""
        timeout = self.state.settings.drain_timeout_s
        self.state.begin_drain(timeout)
        logger.info("%s: draining (%d request(s) in flight, timeout %g s)", reason,
                    self.state.in_flight, timeout)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        deadline = self.state.drain_deadline
        if deadline is None:
            return False
        now = time.monotonic()
        if self.state.in_flight == 0:
            logger.info("drained: no request in flight, shutting down")
        elif now >= deadline:
            if self._cut_off_at is None:
                logger.warning("drain timeout: answering %d request(s) in flight with 503",
                               self.state.in_flight)
                self._cut_off_at = now
                for task in list(self.server_state.tasks):
                    task.cancel(DRAIN_TIMEOUT_CANCEL)
                return False
            if now - self._cut_off_at < SHUTDOWN_GRACE_S:
                return False
            logger.warning("drain timeout: shutting down with %d request(s) in flight",
                           self.state.in_flight)
        else:
            if now - self._last_report >= 5.0:
                self._last_report = now
                logger.info("draining: %d request(s) in flight, %.0f s left",
                            self.state.in_flight, deadline - now)
            return False
        self.should_exit = True
        return True


def serve(app: Any, state: ServiceState, host: str, port: int, log_level: str) -> None:
    """Run ``app`` until a signal drains it; returns normally (exit status 0) after a drain."""
    config = server_config(app, state.settings, host, port, log_level,
                           timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    DrainingServer(config, state).run()
