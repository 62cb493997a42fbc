"""Every error leaves the API as JSON ``{"error": code, "detail": message}``.

A 500 is the server's fault, never the input's, and its detail is whatever an exception said
(a CUDA message, a path, a library's internals): the handler logs it with the request id and
answers a generic sentence naming that id instead, so the text stays in the server's log.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger("service.api")
CLIENT_CLOSED = 499  # nginx's code: the client went away before the answer
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def error_response(status: int, error: str, detail: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def request_id(request: Request) -> str:
    """The id :class:`~service.api.security.SecurityMiddleware` validated or assigned."""
    return str(request.scope.get("state", {}).get("request_id")
               or request.headers.get("x-request-id", "-"))


def public_detail(request: Request, exc: ApiError) -> str:
    """What the client may read of ``exc``; a 500's own text only goes to the log."""
    rid = request_id(request)
    if exc.status == CLIENT_CLOSED:
        logger.info("request %s: the client closed the connection (%s)", rid, exc.detail)
    if exc.status != 500:  # 503/504 details are ours: what to retry, which limit
        return exc.detail
    logger.error("request %s: %s: %s", rid, exc.error, exc.detail,
                 exc_info=exc.__cause__ or exc)
    return f"the server failed to process this request ({exc.error}); quote request id {rid}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, public_detail(request, exc), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_parameter", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return error_response(exc.status_code, code, str(exc.detail), headers)


def allowed_methods(request: Request) -> str:
    """Every method of the path, for a 405's ``Allow`` (RFC 9110 15.5.6). Starlette names only
    those of the first route that matched the path, and one path can have several routes
    (GET and DELETE /v1/jobs/{id}); included routers hide their routes' methods, so each
    method is tried against the whole router instead."""
    routes = request.app.router.routes
    allowed = [method for method in HTTP_METHODS
               if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                      for route in routes)]
    return ", ".join(allowed)
