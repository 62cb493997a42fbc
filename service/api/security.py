"""The outermost layer of the app: request ids, security headers, and the last-resort 500.

* **Request id.** A client's ``X-Request-ID`` is kept only if it matches
  ``[A-Za-z0-9._-]{1,64}``; anything else (markup, control characters, a megabyte) is replaced
  by a fresh id, because the id is echoed in responses and written to logs. The chosen id is
  written back into the request headers, so every layer below reads the same one, and is put
  on every response.
* **Headers on every response**, errors from other middleware included: ``nosniff``,
  ``Referrer-Policy: no-referrer``, ``Cache-Control: no-store`` unless the route set its own
  (restored images and errors must not sit in shared caches), and a Content-Security-Policy
  chosen per response: API answers (JSON, images) get ``default-src 'none'`` -- they are never
  meant to run anything; HTML pages get a same-origin policy; the Swagger UI page also gets the
  inline start-up script it needs. A route that sets its own policy keeps it.
* **No exception text reaches a client.** An exception nothing else handled is logged with its
  traceback and the request id, and answered JSON 500 ``internal_error`` naming only the id. A
  client that went away (``ClientDisconnect``) is logged as such, without a traceback.
"""

from __future__ import annotations

import logging
import re
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response

logger = logging.getLogger("service.api")

REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,64}")
CSP_API = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
CSP_PAGES = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
             "frame-ancestors 'none'; base-uri 'self'; form-action 'self'")
# /docs (service.web.docs) loads Swagger UI from this origin and starts it with an inline script.
CSP_DOCS = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'self'")
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
STATIC_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def request_id_for(raw: bytes | None) -> str:
    """The client's id when it is safe to echo, else a new one."""
    if raw is not None and REQUEST_ID_RE.fullmatch(raw):
        return raw.decode("ascii")
    return uuid.uuid4().hex


def content_security_policy(path: str, content_type: bytes) -> bytes:
    if not content_type.lower().startswith(b"text/html"):
        return CSP_API.encode()
    return (CSP_DOCS if path in DOCS_PATHS else CSP_PAGES).encode()


def security_headers(path: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` plus the ones above that the response does not already carry."""
    present = {name.lower() for name, _ in headers}
    added = [h for h in STATIC_HEADERS if h[0] not in present]
    if b"cache-control" not in present:
        added.append((b"cache-control", b"no-store"))
    if b"content-security-policy" not in present:
        content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        added.append((b"content-security-policy", content_security_policy(path, content_type)))
    return [*headers, *added]


class SecurityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = request_id_for(raw)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
        scope["headers"].append((b"x-request-id", rid.encode()))
        scope.setdefault("state", {})["request_id"] = rid
        path = scope["path"]
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": security_headers(path, headers)}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            logger.info("request %s: the client closed the connection (%s %s)", rid,
                        scope["method"], path)
        except Exception:
            logger.exception("request %s: unhandled error in %s %s", rid, scope["method"], path)
            if started:
                raise  # mid-body: only closing the connection can tell the client
            await error_response(
                500, "internal_error",
                f"the server failed to handle this request; quote request id {rid}",
            )(scope, receive, send_with_headers)
