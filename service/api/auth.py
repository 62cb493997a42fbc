"""API-key authentication, per-key task allow-lists, rate and concurrency limits.

Active only when ``api_keys_file`` is set. A key arrives as ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``; the paths in ``auth_exempt_paths`` (probes and metrics by default) need
none, so the kubelet and Prometheus keep working. Answers, in the JSON error contract:

* 401 ``missing_api_key`` / ``invalid_api_key`` (unknown or revoked), with ``WWW-Authenticate``;
* 403 ``forbidden``: a valid key whose ``tasks`` list does not include the requested task;
* 429 ``rate_limited`` / ``too_many_concurrent``, with ``Retry-After``.

Keys are never logged; the key's *name* is, and is left in ``scope["state"]["api_key"]``.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.api.ratelimit import KeyLimiter, Limits
from service.auth import ApiKeyRecord, KeyRing
from service.settings import Settings

logger = logging.getLogger("service.api.auth")


def is_exempt(path: str, exempt: list[str]) -> bool:
    """Exact paths, or prefixes written with a trailing ``*`` (``/static/*``)."""
    return any(path == p or (p.endswith("*") and path.startswith(p[:-1])) for p in exempt)


def presented_key(headers: Headers) -> tuple[str | None, str | None]:
    """``(key, problem)``: the key from either header, or why the header is unusable."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "the Authorization header must be 'Bearer <key>'"
        return token.strip(), None
    key = headers.get("x-api-key", "").strip()
    return (key or None), None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, ring: KeyRing, settings: Settings) -> None:
        self.app, self.ring, self.settings = app, ring, settings
        self.limiter = KeyLimiter()
        self._generation = ring.generation

    def _limits(self, record: ApiKeyRecord) -> Limits:
        s = self.settings
        return Limits(
            rate_per_s=record.rate_per_s if record.rate_per_s is not None else s.rate_limit_per_s,
            burst=record.burst if record.burst is not None else s.rate_limit_burst,
            max_concurrent=(record.max_concurrent if record.max_concurrent is not None
                            else s.max_concurrent_per_key),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_exempt(scope["path"], self.settings.auth_exempt_paths):
            await self.app(scope, receive, send)
            return
        key, problem = presented_key(Headers(scope=scope))
        challenge = {"WWW-Authenticate": 'Bearer realm="diffmamba"'}
        if problem is not None:
            await error_response(401, "invalid_api_key", problem, challenge)(scope, receive, send)
            return
        if key is None:
            await error_response(
                401, "missing_api_key",
                "this server needs an API key: send 'Authorization: Bearer <key>' or "
                "'X-API-Key: <key>'", challenge)(scope, receive, send)
            return
        record = self.ring.lookup(key)
        if self.ring.generation != self._generation:  # the file changed: drop revoked keys
            self._generation = self.ring.generation
            self.limiter.forget_all_but(self.ring.names())
        if record is None:
            logger.info("refused an unknown or revoked API key (%s %s)",
                        scope["method"], scope["path"])
            await error_response(401, "invalid_api_key", "the API key is unknown or revoked",
                                 {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                                 )(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = record.name
        task = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("task", [None])[0]
        if task is not None and not record.allows_task(task):
            allowed = ", ".join(record.tasks or ())
            await error_response(403, "forbidden",
                                 f"this API key may not use task {task!r} (allowed: {allowed})"
                                 )(scope, receive, send)
            return
        refusal = self.limiter.acquire(record.name, self._limits(record))
        if refusal is not None:
            logger.info("key %s: %s", record.name, refusal.error)
            await error_response(429, refusal.error, refusal.detail,
                                 {"Retry-After": str(refusal.retry_after_s)}
                                 )(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release(record.name)
