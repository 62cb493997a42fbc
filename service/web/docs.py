"""``/docs``: Swagger UI from the installed ``swagger-ui-bundle-v2`` package, not a CDN.

FastAPI's default page loads its bundle from jsDelivr and a favicon from fastapi.tiangolo.com,
so it breaks offline and needs those hosts in the Content-Security-Policy. Only the files the
page loads are served (``/static/docs/…``), not the package's demo ``index.html``, which points
at a remote sample API. ``validatorUrl`` is off: Swagger UI would otherwise send the schema's
URL to swagger.io. ReDoc is not offered: no Python package ships its standalone bundle.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Scope
from swagger_ui_bundle import swagger_ui_path

from service.web.page import RevalidatedStaticFiles

DOCS_ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})


class DocsAssets(RevalidatedStaticFiles):
    """The Swagger UI package's directory, reduced to :data:`DOCS_ASSETS`."""

    def __init__(self) -> None:
        super().__init__(directory=swagger_ui_path)

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path not in DOCS_ASSETS:
            raise HTTPException(404, f"no docs asset {path!r}")
        return await super().get_response(path, scope)


def install_docs(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} — API docs",
            swagger_js_url=f"{root}/static/docs/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/static/docs/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/docs/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    # Mounted before the /static of service.web.page, which would otherwise answer first.
    app.mount("/static/docs", DocsAssets(), name="docs-assets")
