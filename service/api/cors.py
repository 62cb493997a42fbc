"""CORS with an allow-list of origins (``cors_allow_origins``), answering in the JSON contract.

Written here rather than taken from Starlette because Starlette's ``CORSMiddleware`` refuses a
preflight with a plain-text 400; browsers only need the status, but people debugging with
``curl`` need to read which of origin, method or header was refused. Without any allowed origin
(the default) every preflight is refused with 403 and responses carry no CORS headers, so
browsers keep the same-origin policy; ``["*"]`` allows any origin (keys travel in headers, not
cookies, so no credentials mode is ever granted).

Preflights are answered before authentication: browsers send them without the API key.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response

ALLOWED_METHODS = ("GET", "HEAD", "POST", "DELETE")
ALLOWED_HEADERS = frozenset({
    "authorization", "x-api-key", "content-type", "x-request-id", "prefer", "accept",
    "accept-language", "content-language", "last-event-id",
})
EXPOSED_HEADERS = ("X-Request-ID, X-Seed, X-Steps, X-Tiles, Server-Timing, Retry-After, "
                   "Location, Content-Disposition")
PREFLIGHT_MAX_AGE_S = 600


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class CorsMiddleware:
    def __init__(self, app: ASGIApp, allow_origins: list[str]) -> None:
        self.app = app
        self.any_origin = "*" in allow_origins
        self.origins = frozenset(normalize_origin(o) for o in allow_origins if o != "*")

    def allowed(self, origin: str) -> bool:
        return self.any_origin or normalize_origin(origin) in self.origins

    def _allow_origin_value(self, origin: str) -> bytes:
        return b"*" if self.any_origin else origin.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if (scope["method"] == "OPTIONS" and origin is not None
                and "access-control-request-method" in headers):
            await self._preflight(origin, headers)(scope, receive, send)
            return
        if origin is None or not self.allowed(origin):
            await self.app(scope, receive, send)
            return
        cors = [(b"access-control-allow-origin", self._allow_origin_value(origin)),
                (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
                (b"vary", b"Origin")]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _preflight(self, origin: str, headers: Headers) -> Response:
        if not self.any_origin and not self.origins:
            return error_response(403, "cors_denied", "cross-origin requests are not enabled "
                                  "on this server (DIFFMAMBA_CORS_ALLOW_ORIGINS is empty)")
        if not self.allowed(origin):
            return error_response(403, "cors_denied", f"origin {origin!r} is not allowed")
        method = headers["access-control-request-method"].strip().upper()
        if method not in ALLOWED_METHODS:
            return error_response(403, "cors_denied", f"method {method!r} is not allowed; "
                                  f"allowed: {', '.join(ALLOWED_METHODS)}")
        requested = [h.strip().lower() for h in
                     headers.get("access-control-request-headers", "").split(",") if h.strip()]
        refused = [h for h in requested if h not in ALLOWED_HEADERS]
        if refused:
            return error_response(403, "cors_denied",
                                  f"request header(s) {', '.join(refused)} not allowed; "
                                  f"allowed: {', '.join(sorted(ALLOWED_HEADERS))}")
        allow = {
            "Access-Control-Allow-Origin": self._allow_origin_value(origin).decode("latin-1"),
            "Access-Control-Allow-Methods": ", ".join(ALLOWED_METHODS),
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }
        if requested:
            allow["Access-Control-Allow-Headers"] = ", ".join(requested)
        return Response(status_code=204, headers=allow)
