"""``/v1/jobs``: the restoration as an async job — submit, poll, stream events, fetch, cancel.

A job takes the same body and query as ``POST /restore`` and runs through the same code after
the upload is read (``decode_upload`` at submit, so bad input is still a 4xx then, and
``restore_upload`` in the job), on the same batcher. Its record lives in the job store, so with
the Redis store any replica answers for any job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.body import read_image_upload
from service.api.errors import ApiError
from service.api.restore import (
    SEED_MAX,
    STEPS_MAX,
    STEPS_MIN,
    TILE_MAX,
    TILE_STEP,
    DecodedUpload,
    admit,
    decode_upload,
    restore_upload,
)
from service.api.schemas import (
    CONFLICT,
    IMAGE_OUTPUT_CONTENT,
    IMAGE_REQUEST_BODY,
    JOB_CREATED,
    JOB_ERRORS,
    JOB_EVENT,
    SERVER_ERROR,
    SUBMIT_ERRORS,
    UPLOAD_ERRORS,
    JobView,
)
from service.api.state import ServiceState
from service.jobs import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    JobFailure,
    JobManager,
    JobOutput,
    JobRecord,
    QueueFullError,
    WebhookRefusedError,
    check_webhook_url,
)
from service.jobs.manager import ProgressFn

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JOB_ID = re.compile(r"[0-9a-f]{32}")
HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing a quiet stream
# Headers of the /restore response that a job's result carries too.
KEPT_HEADERS = ("x-", "server-timing")


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _manager(state: ServiceState) -> JobManager:
    if state.jobs is None:
        detail = f"the job store is unavailable: {state.jobs_error}" if state.jobs_error else \
            "the job store is starting"
        raise ApiError(503, "jobs_unavailable", detail, {"Retry-After": "5"})
    return state.jobs


@contextlib.contextmanager
def _store_errors(manager: JobManager) -> Iterator[None]:
    """A store that cannot be reached is a retryable 503, not a 500."""
    try:
        yield
    except manager.store.outage_errors as exc:
        raise ApiError(503, "jobs_unavailable", f"the job store is unreachable: {exc}",
                       {"Retry-After": "2"}) from exc


def _caller(request: Request) -> str | None:
    """The API key's name (set by the auth middleware), None without keys."""
    return request.scope.get("state", {}).get("api_key")


async def _record(request: Request, manager: JobManager, job_id: str) -> JobRecord:
    record = None
    if JOB_ID.fullmatch(job_id):
        with _store_errors(manager):
            record = await manager.store.get(job_id)
    if record is not None and record.client_key not in (None, _caller(request)):
        record = None  # another key's job: as if it did not exist
    if record is None:
        raise ApiError(404, "job_not_found",
                       f"no job {job_id!r}: unknown, or expired (results are kept"
                       f" {manager.store.ttl_s:g} s) or evicted")
    return record


def _view(manager: JobManager, record: JobRecord) -> dict:
    return record.view(manager.store.ttl_s)


def _compute(state: ServiceState, record: JobRecord, upload: DecodedUpload, rid: str):
    """The job's work: ``restore_upload`` as for /restore; a full batcher queue is waited out
    (retried after its Retry-After) rather than failing a job that was already accepted."""
    p = record.params

    async def compute(progress: ProgressFn) -> JobOutput:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + state.settings.request_timeout_s
        while True:
            try:
                response = await restore_upload(state, record.task, upload, p["steps"],
                                                p["seed"], p["format"], p["tile"], rid,
                                                progress=progress)
                break
            except ApiError as exc:
                retry = float(exc.headers.get("Retry-After", "0") or 0)
                if exc.error == "queue_full" and loop.time() + retry < give_up:
                    await asyncio.sleep(retry)
                    continue
                raise JobFailure(exc.error, exc.detail) from exc
        headers = {k: v for k, v in response.headers.items() if k.startswith(KEPT_HEADERS)}
        return JobOutput(bytes(response.body), response.media_type or "", headers)

    return compute


async def submit_job(request: Request, task: str, steps: int | None, seed: int | None,
                     fmt: str | None, tile: int | None, webhook: str | None) -> JSONResponse:
    """POST /v1/jobs, and POST /restore with ``Prefer: respond-async``."""
    state = _state(request)
    model = admit(state, task, tile)
    manager = _manager(state)
    if webhook is not None:
        try:
            check_webhook_url(webhook, state.settings.job_webhook_hosts)
        except WebhookRefusedError as exc:
            raise ApiError(422, "invalid_parameter", str(exc)) from exc
    if manager.active >= manager.queue_size:  # before reading the body; submit checks again
        raise ApiError(503, "queue_full", f"{manager.active} unfinished jobs on this replica",
                       {"Retry-After": "2"})
    body = await read_image_upload(request, state.settings.max_upload_bytes)
    upload = await decode_upload(state, model.name, body, fmt=fmt)
    job_id = uuid.uuid4().hex
    # The seed is fixed now, so the status shows it and the result is reproducible.
    seed = secrets.randbelow(2**31) if seed is None and model.kind.takes_timestep else seed
    record = JobRecord(id=job_id, task=model.name, webhook=webhook, client_key=_caller(request),
                       params={"steps": steps, "seed": seed, "format": fmt, "tile": tile})
    given = request.headers.get("x-request-id", "")
    rid = given if given and len(given) <= 128 and given.isprintable() else job_id
    try:
        with _store_errors(manager):
            await manager.submit(record, _compute(state, record, upload, rid))
    except QueueFullError as exc:
        raise ApiError(503, "queue_full", str(exc), {"Retry-After": "2"}) from exc
    headers = {"Location": f"/v1/jobs/{job_id}"}
    if "prefer" in request.headers:
        headers["Preference-Applied"] = "respond-async"
    return JSONResponse(_view(manager, record), status_code=202, headers=headers)


@router.post("", status_code=202, summary="Submit a restoration job (same body and query as"
             " /restore); 202 with the job and a Location header",
             responses={202: JOB_CREATED, **UPLOAD_ERRORS, **SUBMIT_ERRORS, **SERVER_ERROR},
             openapi_extra=IMAGE_REQUEST_BODY)
async def create_job(
    request: Request,
    task: str = Query(..., description="derain, denoise, deblur or another served task"),
    steps: int | None = Query(None, ge=STEPS_MIN, le=STEPS_MAX,
                              description="sampling steps (default: task's)"),
    seed: int | None = Query(None, ge=0, le=SEED_MAX, description="noise seed; random if absent"),
    format: Literal["png", "jpeg", "webp"] | None = Query(None, description="output format"),
    tile: int | None = Query(None, ge=TILE_STEP, le=TILE_MAX,
                             description="tile size override, above the tile overlap"),
    webhook: str | None = Query(None, max_length=2048, description="URL POSTed the final job"
                                " status; its host must be in DIFFMAMBA_JOB_WEBHOOK_HOSTS"),
) -> JSONResponse:
    return await submit_job(request, task, steps, seed, format, tile, webhook)


@router.get("/{job_id}", summary="A job's state, progress, timings and error",
            responses={200: {"model": JobView}, **JOB_ERRORS, **SERVER_ERROR})
async def get_job(request: Request, job_id: str) -> JSONResponse:
    manager = _manager(_state(request))
    return JSONResponse(_view(manager, await _record(request, manager, job_id)))


@router.get("/{job_id}/result", response_class=Response,
            summary="The restored image of a succeeded job (409 until then)",
            responses={200: {"description": "the restored image", "content": IMAGE_OUTPUT_CONTENT},
                       **JOB_ERRORS, **CONFLICT, **SERVER_ERROR})
async def get_result(request: Request, job_id: str) -> Response:
    manager = _manager(_state(request))
    record = await _record(request, manager, job_id)
    if record.state != SUCCEEDED:
        if record.state in (FAILED, CANCELLED):
            assert record.error is not None
            raise ApiError(409, f"job_{record.state}",
                           f"job {record.state}, no result: {record.error['error']}:"
                           f" {record.error['detail']}")
        raise ApiError(409, "job_not_finished", f"job is {record.state}"
                       f" ({record.progress.passes_done}/{record.progress.passes_total} passes);"
                       " poll GET /v1/jobs/{id} or its /events", {"Retry-After": "1"})
    with _store_errors(manager):
        data = await manager.store.get_result(job_id)
    if data is None:
        raise ApiError(404, "job_not_found", f"the result of job {job_id} expired or was evicted")
    return Response(data, media_type=record.media_type, headers=record.headers)


@router.delete("/{job_id}", summary="Cancel a queued or running job",
               responses={200: {"model": JobView, "description": "cancelled"},
                          202: {"model": JobView, "description": "cancel requested: the replica"
                                " running the job has yet to act on it"},
                          **JOB_ERRORS, **CONFLICT, **SERVER_ERROR})
async def cancel_job(request: Request, job_id: str) -> JSONResponse:
    manager = _manager(_state(request))
    await _record(request, manager, job_id)  # 404 first
    with _store_errors(manager):
        record = await manager.cancel(job_id)
    if record is None:
        raise ApiError(404, "job_not_found", f"job {job_id} expired meanwhile")
    if record.state in (SUCCEEDED, FAILED):
        raise ApiError(409, "job_finished", f"job already {record.state}: nothing to cancel")
    # 200 once cancelled; 202 while the owning replica has yet to act on the flag.
    return JSONResponse(_view(manager, record), status_code=200 if record.terminal else 202)


def _sse(seq: int, event: str, data: dict) -> str:
    return f"id: {seq}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


async def _events(state: ServiceState, manager: JobManager, job_id: str) -> AsyncIterator[str]:
    """``state`` events when the state changes, ``progress`` events between; ends after the
    terminal state. A draining replica ends streams of jobs it does not run itself, so the
    client reconnects to another replica."""
    queue: asyncio.Queue[JobRecord | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for record in manager.store.watch(job_id):
                await queue.put(record)
        finally:
            await queue.put(None)

    pumper = asyncio.create_task(pump())
    try:
        seq, last_state = 0, None
        while True:
            try:
                record = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if record is None:
                return
            seq += 1
            yield _sse(seq, "state" if record.state != last_state else "progress",
                       _view(manager, record))
            last_state = record.state
            if state.draining and record.owner != manager.owner:
                return
    finally:
        pumper.cancel()
        with contextlib.suppress(BaseException):
            await pumper


@router.get("/{job_id}/events", response_class=StreamingResponse,
            summary="Server-sent events: the job's state changes and progress, to the end",
            responses={200: {"description": "`state` and `progress` events; their data is the"
                             " job view (JobView); the stream ends after the final state",
                             "content": {"text/event-stream": {"schema": JOB_EVENT}}},
                       **JOB_ERRORS, **SERVER_ERROR})
async def job_events(request: Request, job_id: str) -> StreamingResponse:
    state = _state(request)
    manager = _manager(state)
    await _record(request, manager, job_id)
    return StreamingResponse(_events(state, manager, job_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
