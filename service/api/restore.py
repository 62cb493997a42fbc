"""``POST /restore``: HTTP -> header -> memory admission -> decode/validate -> tiles -> batcher ->
sampler -> blend -> encode.

``decode_upload`` and ``restore_upload`` are the path /restore and async jobs share; admission by
memory (service.runtime.admission) is inside them, so every request that holds an image is
admitted: /restore reserves its estimated peak once, before decoding; a job reserves while it
decodes at submit and again while it computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from fastapi import APIRouter, Query, Request, Response

from service.api.body import read_image_upload
from service.api.errors import ApiError
from service.api.schemas import (
    IMAGE_OUTPUT_CONTENT,
    IMAGE_REQUEST_BODY,
    JOB_CREATED,
    PREFER_HEADER,
    SERVER_ERROR,
    SUBMIT_ERRORS,
    UPLOAD_ERRORS,
)
from service.api.state import ServiceState
from service.batching import (
    BatcherClosedError,
    BatchExecutionError,
    DeadlineExceededError,
    QueueFullError,
    StepTiming,
)
from service.imaging import (
    DecodedImage,
    ImageError,
    check_encodable,
    encode_image,
    scaled_like,
)
from service.restoration import open_session
from service.runtime.admission import AdmissionTimeout, MemoryAdmission, TooLargeForMemory
from service.runtime.batched import run_session_batched
from service.runtime.memory import MemoryEstimate
from service.runtime.pipeline import (
    decode_compact,
    encoded_format,
    estimate_for,
    header_estimate,
    returning_memory,
    tiling_policy,
    to_hwc,
)
from service.runtime.task import TaskModel
from service.settings import Settings

router = APIRouter()
T = TypeVar("T")
Progress = Callable[[int, int, int], None]
"""``progress(passes_done, passes_total, tiles)`` in network passes of one tile."""
DISCONNECT_POLL_S = 0.25
SEED_MAX = 2**63 - 1
OUTPUT_FORMATS = ("png", "jpeg", "webp")  # the values of `format=` (restore_endpoint)


def _settings_bound(name: str, bound: str) -> int:
    """A bound (``ge``/``le``) of a setting's Field: a request may ask what the setting may be."""
    return next(getattr(m, bound) for m in Settings.model_fields[name].metadata
                if hasattr(m, bound))


STEPS_MIN = _settings_bound("default_steps", "ge")
STEPS_MAX = _settings_bound("default_steps", "le")
TILE_STEP = 8  # tiles are cut on this grid (tile_size and tile_overlap are multiples of it too)
TILE_MAX = _settings_bound("tile_size", "le")


def tile_minimum(overlap: int) -> int:
    """The smallest ``tile=`` the server takes: one grid step above the tile overlap."""
    return overlap + TILE_STEP


def _state(request: Request) -> ServiceState:
    return request.app.state.service


async def _cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client goes away first, cancel it so its tiles leave the queue."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ApiError(499, "client_closed_request", "client disconnected")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if given and len(given) <= 128 and given.isprintable() else uuid.uuid4().hex


def _check_tile(tile: int | None, overlap: int) -> None:
    if tile is None:
        return
    if tile % TILE_STEP:
        raise ApiError(422, "invalid_parameter",
                       f"tile: must be a multiple of {TILE_STEP}, got {tile}")
    if tile < tile_minimum(overlap):
        raise ApiError(422, "invalid_parameter",
                       f"tile: must be larger than the tile overlap ({overlap}), got {tile}")


def check_output(image: DecodedImage, fmt: str | None, scale: int) -> None:
    """The restored image fits the output format (WebP, JPEG side limits); 422 if not."""
    try:
        check_encodable(image, fmt, scale=scale, choices=OUTPUT_FORMATS)
    except ImageError as exc:
        raise ApiError(exc.status, exc.error, exc.detail) from exc


def prefers_async(request: Request) -> bool:
    """``Prefer: respond-async`` (RFC 7240), among other preferences or with parameters."""
    for header in request.headers.getlist("prefer"):
        for pref in header.split(","):
            if pref.split(";")[0].split("=")[0].strip().lower() == "respond-async":
                return True
    return False


def admit(state: ServiceState, task: str, tile: int | None) -> TaskModel:
    """The checks before any work, for /restore and /v1/jobs alike: -> the task's model."""
    if state.draining:
        raise ApiError(503, "draining", "the server is shutting down; retry on another replica",
                       {"Retry-After": "1"})
    if not state.ready:
        raise ApiError(503, "not_ready", "model loading failed (see the server log)"
                       if state.load_error else "models are still loading", {"Retry-After": "5"})
    model = state.tasks.get(task)
    if model is None:
        raise ApiError(404, "unknown_task",
                       f"unknown task {task!r}; served tasks: {sorted(state.tasks)}")
    _check_tile(tile, state.settings.tile_overlap)
    return model


@router.post(
    "/restore",
    summary="Restore a degraded image",
    response_class=Response,
    responses={
        200: {"description": "the restored image (the input's format unless `format` is given;"
                             " PNG for BMP)", "content": IMAGE_OUTPUT_CONTENT},
        202: {**JOB_CREATED, "description": "with `Prefer: respond-async`: the job (see POST"
                                            " /v1/jobs)"},
        **UPLOAD_ERRORS, **SUBMIT_ERRORS, **SERVER_ERROR,
    },
    openapi_extra={**IMAGE_REQUEST_BODY, "parameters": [PREFER_HEADER]},
)
async def restore_endpoint(
    request: Request,
    task: str = Query(..., description="derain, denoise, deblur or another served task"),
    steps: int | None = Query(None, ge=STEPS_MIN, le=STEPS_MAX, description="sampling steps"
                             " (default: task's; ignored by single-pass tasks)"),
    seed: int | None = Query(None, ge=0, le=SEED_MAX, description="noise seed; random if absent"
                             " (diffusion tasks only)"),
    format: Literal["png", "jpeg", "webp"] | None = Query(
        None, description="output format (default: the input's, else PNG)"
    ),
    tile: int | None = Query(None, ge=TILE_STEP, le=TILE_MAX,
                             description="tile size override, above the tile overlap"
                             " (single-pass tasks: tile even images under the whole-image"
                             " budget)"),
) -> Response:
    if prefers_async(request):  # RFC 7240: the same work as POST /v1/jobs
        from service.api.jobs import submit_job  # (lazy: the jobs module builds on this one)

        return await submit_job(request, task, steps, seed, format, tile, None)
    state = _state(request)
    rid = _request_id(request)
    model = admit(state, task, tile)

    metrics = state.metrics
    metrics.in_flight.labels(task=task).inc()
    started = time.perf_counter()
    status = 500
    try:
        response = await _restore(request, state, model.name, steps, seed, format, tile, rid)
        status = response.status_code
        return response
    except ApiError as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 503  # the server is stopping (drain timeout): answered 503 draining
        raise
    finally:
        metrics.in_flight.labels(task=task).dec()
        metrics.requests.labels(task=task, status=str(status)).inc()
        metrics.request_seconds.labels(task=task).observe(time.perf_counter() - started)


async def _restore(request: Request, state: ServiceState, task_name: str, steps: int | None,
                   seed: int | None, fmt: str | None, tile: int | None, rid: str) -> Response:
    t0 = time.perf_counter()
    body = await read_image_upload(request, state.settings.max_upload_bytes)
    deadline = time.monotonic() + state.settings.request_timeout_s
    estimate = upload_estimate(state, task_name, tile, body, fmt)
    # One reservation of the whole peak, before a pixel is decoded (unless the header could
    # not be read: then decode_upload reports the error, or admits the decoded size itself).
    async with _admitted(state, estimate, deadline):
        upload = await decode_upload(state, task_name, body, tile=tile, fmt=fmt,
                                     admitted=estimate is not None)
        upload.decode_s = time.perf_counter() - t0  # Server-Timing's decode includes the upload
        return await restore_upload(state, task_name, upload, steps, seed, fmt, tile, rid,
                                    request=request, admitted=estimate is not None)


@dataclass
class DecodedUpload:
    """A validated upload: ``image`` keeps the metadata the encoder needs (its float pixels are
    dropped), ``pixels`` the compact (1, 3, H, W) condition (uint8 for 8-bit images)."""

    image: DecodedImage
    decode_s: float
    pixels: torch.Tensor | None = None
    estimate: MemoryEstimate | None = None


def _admission(state: ServiceState) -> MemoryAdmission:
    if state.admission is None:
        raise ApiError(503, "not_ready", "models are still loading", {"Retry-After": "5"})
    return state.admission


def upload_estimate(state: ServiceState, task_name: str, tile: int | None, body: bytes,
                    fmt: str | None = None) -> MemoryEstimate | None:
    """The request's estimated peak from the upload's header (None if unreadable); 413
    ``too_large_for_memory`` at once if it could never fit the memory budget."""
    header, estimate = header_estimate(state.tasks[task_name], state.settings, tile, body, fmt)
    scale = state.tasks[task_name].kind.scale
    if header is not None and header.width * header.height * scale * scale > \
            state.settings.max_pixels:
        return None  # over max_pixels: the decoder refuses it from the header (image_too_large)
    if estimate is not None:
        _check_fits(state, estimate)
    return estimate


def _check_fits(state: ServiceState, estimate: MemoryEstimate) -> None:
    try:
        _admission(state).check(estimate.peak)
    except TooLargeForMemory as exc:
        raise ApiError(413, "too_large_for_memory", str(exc)) from exc


@contextlib.asynccontextmanager
async def _admitted(state: ServiceState, estimate: MemoryEstimate | None,
                    deadline: float) -> AsyncIterator[None]:
    """Hold ``estimate`` of the memory budget (nothing for None), then return freed memory."""
    if estimate is None:
        yield
        return
    async with returning_memory(estimate):
        try:
            async with _admission(state).reserve(estimate.peak, deadline):
                yield
        except TooLargeForMemory as exc:
            raise ApiError(413, "too_large_for_memory", str(exc)) from exc
        except AdmissionTimeout as exc:
            raise ApiError(504, "timeout", f"not started within "
                           f"{state.settings.request_timeout_s:g} s: {exc}") from exc


async def decode_upload(state: ServiceState, task_name: str, body: bytes, *,
                        tile: int | None = None, fmt: str | None = None,
                        admitted: bool = False) -> DecodedUpload:
    """The uploaded bytes, validated, decoded and compacted (4xx ApiError for bad input).

    Unless the caller holds the request's reservation (``admitted``), the decoding holds one of
    its own: 413 ``too_large_for_memory`` before decoding if the image could never fit.
    """
    settings = state.settings
    model = state.tasks[task_name]
    t0 = time.perf_counter()
    deadline = time.monotonic() + settings.request_timeout_s
    estimate = None if admitted else upload_estimate(state, task_name, tile, body, fmt)
    try:
        async with _admitted(state, estimate, deadline):
            compact = await asyncio.to_thread(decode_compact, body, settings, model.kind.scale)
    except ImageError as exc:
        raise ApiError(exc.status, exc.error, exc.detail) from exc
    estimate = estimate_for(model, settings, tile, compact.height, compact.width,
                            eight_bit=compact.pixels.dtype == torch.uint8,
                            output_format=encoded_format(compact.like.format, fmt))
    if not admitted:
        _check_fits(state, estimate)  # an unreadable header: known only now
    return DecodedUpload(compact.like, time.perf_counter() - t0, compact.pixels, estimate)


async def restore_upload(state: ServiceState, task_name: str, upload: DecodedUpload,
                         steps: int | None, seed: int | None, fmt: str | None, tile: int | None,
                         rid: str, *, request: Request | None = None,
                         progress: Progress | None = None, admitted: bool = False) -> Response:
    """Tiles -> batcher -> encode for one decoded image: the response of /restore, and what an
    async job stores. With ``request``, its tiles are cancelled if that client disconnects.
    Unless the caller holds the request's memory reservation (``admitted``), the work holds
    one, waiting for it up to the request's deadline."""
    settings = state.settings
    deadline = time.monotonic() + settings.request_timeout_s
    estimate = None if admitted else upload.estimate
    if estimate is None and not admitted:
        raise RuntimeError("an upload without an estimate: decode it with decode_upload")
    t_wait = time.perf_counter()
    async with _admitted(state, estimate, deadline):
        upload.decode_s += time.perf_counter() - t_wait  # shown as decode: waiting for memory
        return await _restore_admitted(state, task_name, upload, steps, seed, fmt, tile, rid,
                                       request, progress, deadline)


async def _restore_admitted(state: ServiceState, task_name: str, upload: DecodedUpload,
                            steps: int | None, seed: int | None, fmt: str | None,
                            tile: int | None, rid: str, request: Request | None,
                            progress: Progress | None, deadline: float) -> Response:
    settings = state.settings
    model = state.tasks[task_name]
    kind = model.kind
    image = upload.image
    check_output(image, fmt, kind.scale)  # before any compute
    t_decoded = time.perf_counter()
    t0 = t_decoded - upload.decode_s

    seed = secrets.randbelow(2**31) if seed is None else seed
    steps = steps or model.default_steps
    policy = tiling_policy(settings, tile)
    timing = StepTiming()
    if upload.pixels is None:
        raise RuntimeError("an upload without pixels: decode it with decode_upload")
    # The session stores the compact condition as it is (no copy); a retried job reuses it.
    session = await asyncio.to_thread(open_session, kind, upload.pixels, policy, steps=steps,
                                      seed=seed)
    tiles = session.num_tiles
    on_round = None
    if progress is not None:
        def on_round(done: int, rounds: int) -> None:
            progress(done * tiles, rounds * tiles, tiles)

        on_round(0, session.rounds)
    work = run_session_batched(model, session, deadline=deadline, timing=timing,
                               progress=on_round)
    try:
        restored = await (work if request is None else _cancel_on_disconnect(request, work))
    except QueueFullError as exc:
        retry = max(1, int(exc.retry_after_s + 0.999))
        raise ApiError(503, "queue_full", str(exc), {"Retry-After": str(retry)}) from exc
    except DeadlineExceededError as exc:
        raise ApiError(504, "timeout",
                       f"not finished within {settings.request_timeout_s:g} s: {exc}") from exc
    except BatcherClosedError as exc:
        raise ApiError(503, "draining", str(exc), {"Retry-After": "1"}) from exc
    except BatchExecutionError as exc:
        raise ApiError(500, "inference_failed", str(exc)) from exc
    tiles = session.num_tiles
    state.metrics.tiles_per_request.labels(task=task_name).observe(tiles)
    rgb = await asyncio.to_thread(to_hwc, restored)
    del restored, session  # the whole-image state goes before encoding
    t_computed = time.perf_counter()

    try:
        data, media_type = await asyncio.to_thread(
            encode_image, rgb, scaled_like(image, kind.scale), fmt
        )
    except (ImageError, ValueError) as exc:
        raise ApiError(422, "encode_failed", str(exc)) from exc
    t_encoded = time.perf_counter()
    compute_wall = t_computed - t_decoded
    server_timing = ", ".join([
        f"decode;dur={(t_decoded - t0) * 1e3:.1f}",
        f"queue;dur={timing.queue_s * 1e3:.1f}",
        f"compute;dur={max(compute_wall - timing.queue_s, 0.0) * 1e3:.1f}",
        f"encode;dur={(t_encoded - t_computed) * 1e3:.1f}",
    ])
    headers = {"X-Request-ID": rid, "Server-Timing": server_timing, "X-Tiles": str(tiles)}
    if kind.takes_timestep:
        headers.update({"X-Seed": str(seed), "X-Steps": str(steps)})
    return Response(content=data, media_type=media_type, headers=headers)
