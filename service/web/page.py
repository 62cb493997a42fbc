"""``/`` and ``/static/…``: the page that tries the service in a browser (plain ES modules).

No build step: the files in ``static/`` are what the browser runs, shipped as package data.
They use only relative URLs (``static/app.js``, ``v1/jobs``), so the page also works behind a
reverse proxy that serves the app under a path prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
# Revalidate with the ETag on each load instead of the API's no-store: an upgraded server's
# page is picked up at once, and an unchanged one costs a 304.
REVALIDATE = "no-cache"


class RevalidatedStaticFiles(StaticFiles):
    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = REVALIDATE
        return response


def install_page(app: FastAPI) -> None:
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": REVALIDATE})

    app.mount("/static", RevalidatedStaticFiles(directory=STATIC_DIR), name="static")
