"""The FastAPI application: ``uvicorn --factory service.api:create_app``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service import __version__
from service.api.errors import error_response, install_error_handlers
from service.api.jobs import router as jobs_router
from service.api.loop_lag import LoopLagMonitor
from service.api.middleware import install_middleware
from service.api.openapi import install_openapi
from service.api.restore import router as restore_router
from service.api.schemas import DRAINING, NOT_READY, SERVER_ERROR, Alive, Ready, TaskList
from service.api.state import ServiceState
from service.settings import Settings
from service.web import install_web


def create_app(settings: Settings | None = None) -> FastAPI:
    state = ServiceState(settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Load in the background: /healthz answers at once, /readyz once models are warm.
        loader = asyncio.create_task(state.load())
        lag = LoopLagMonitor(state.metrics.loop_lag_seconds.observe)
        lag.start()
        await state.start_jobs()
        try:
            yield
        finally:
            await lag.stop()
            # Under `diffmamba serve` the drain already ran (service.api.drain); under plain
            # uvicorn this is the best-effort drain: queued tiles finish before the batchers stop.
            state.begin_drain(state.settings.drain_timeout_s)
            loader.cancel()
            with contextlib.suppress(BaseException):
                await loader
            await state.stop_jobs(state.drain_time_left())  # before the batchers they use
            await state.stop(state.drain_time_left())

    app = FastAPI(
        title="Diff-Mamba restoration service",
        version=__version__,
        description="POST a degraded image to /restore?task=… and get the restored image back.",
        lifespan=lifespan,
        docs_url=None,  # service.web serves /docs from local files
        redoc_url=None,
    )
    app.state.service = state
    install_error_handlers(app)
    install_middleware(app, state)
    app.include_router(restore_router)
    app.include_router(jobs_router)
    install_openapi(app, state)
    install_web(app)

    @app.get("/healthz", summary="Liveness: the process answers", response_model=None,
             responses={200: {"model": Alive}, **SERVER_ERROR})
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="Readiness: models loaded and warm, not draining",
             responses={200: {"model": Ready}, **NOT_READY, **SERVER_ERROR})
    async def readyz() -> JSONResponse:
        if state.ready and not state.draining:
            return JSONResponse({"status": "ready", "tasks": sorted(state.tasks)})
        reason = ("draining" if state.draining else
                  "model loading failed (see the server log)" if state.load_error else
                  "models are loading")
        return error_response(503, "not_ready", reason, {"Retry-After": "5"})

    @app.get("/v1/tasks", summary="Served tasks with their model kind, config and checkpoint",
             response_model=None, responses={200: {"model": TaskList}, **DRAINING, **SERVER_ERROR})
    async def tasks() -> dict[str, Any]:
        return {"tasks": [t.describe() for t in state.tasks.values()], "ready": state.ready}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"description": "the Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                        **SERVER_ERROR})
    async def metrics(_: Request) -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
