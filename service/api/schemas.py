"""The shapes of the API's answers, as pydantic models, and the ``responses=`` of its routes.

The routes build their JSON by hand (``JSONResponse``, ``error_response``) rather than through
response models: the job view comes from the job store as a dict and errors leave from
middleware too. These models exist so the OpenAPI document says exactly what is sent, and the
contract tests (tests/test_openapi_contract.py, Schemathesis) hold every answer to them.

Each route lists the statuses it can answer itself; what depends on the configuration (API
keys: 401/403/429) is added by :mod:`service.api.openapi` when the document is built.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.imaging import SUPPORTED_INPUT_FORMATS, SUPPORTED_OUTPUT_FORMATS, media_type_for


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer (service.api.errors.error_response)."""

    error: str = Field(description="a stable machine-readable code", examples=["invalid_image"])
    detail: str = Field(description="what went wrong, for people",
                        examples=["the PNG data is truncated: no IEND chunk by byte 1,024"])


class Alive(BaseModel):
    status: Literal["alive"]


class Ready(BaseModel):
    status: Literal["ready"]
    tasks: list[str] = Field(description="the served tasks")


class TaskInfo(BaseModel):
    task: str
    arch: str
    kind: str = Field(description="how the network is driven (service.models.kinds)")
    config: dict[str, Any]
    parameters: int
    sha256: str
    scale: int = Field(description="output size over input size per side (4 for sr)")
    default_steps: int | None = Field(description="null for single-pass tasks")
    steps_ignored: bool
    device: str
    engine: dict[str, Any] | None
    card: dict[str, Any]


class TaskList(BaseModel):
    tasks: list[TaskInfo]
    ready: bool


class JobParams(BaseModel):
    steps: int | None
    seed: int | None
    format: str | None
    tile: int | None


class JobProgress(BaseModel):
    passes_done: int
    passes_total: int
    tiles: int
    step: int
    steps: int
    fraction: float


class JobLinks(BaseModel):
    self: str
    events: str
    result: str | None = Field(None, description="once succeeded")


class JobResultInfo(BaseModel):
    media_type: str | None
    bytes: int


class JobView(BaseModel):
    """service.jobs.model.JobRecord.view: the status of GET /v1/jobs/{id} and of events."""

    id: str
    task: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: JobParams
    progress: JobProgress
    created_at: float
    started_at: float | None
    finished_at: float | None
    timings: dict[str, float]
    error: ErrorBody | None
    expires_at: float | None
    links: JobLinks
    result: JobResultInfo | None = Field(None, description="once succeeded")


def _header(description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


RETRY_AFTER = _header("seconds to wait before retrying", {"type": "integer", "minimum": 1})


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": ErrorBody, "description": description}
    if headers:
        entry["headers"] = headers
    return entry


def _required(header: dict[str, Any]) -> dict[str, Any]:
    return {**header, "required": True}


BINARY = {"type": "string", "format": "binary"}
IMAGE_INPUT_TYPES = tuple(dict.fromkeys(
    [media_type_for(f) for f in SUPPORTED_INPUT_FORMATS] + ["application/octet-stream"]))
"""The raw body's Content-Types the decoder serves (service.imaging.decode)."""
IMAGE_OUTPUT_CONTENT = {media_type_for(f): {"schema": BINARY} for f in SUPPORTED_OUTPUT_FORMATS}

IMAGE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the degraded image: raw bytes, or a multipart/form-data field `file`."
                       " Formats: " + ", ".join(SUPPORTED_INPUT_FORMATS) + " (by content; the"
                       " Content-Type only selects raw or multipart)",
        "content": {
            **{t: {"schema": BINARY} for t in IMAGE_INPUT_TYPES},
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": BINARY}},
                "encoding": {"file": {"contentType": ", ".join(IMAGE_INPUT_TYPES)}},
            },
        },
    },
}
"""``openapi_extra`` of /restore and POST /v1/jobs (service.api.body.read_image_upload)."""

PREFER_HEADER = {
    "name": "Prefer", "in": "header", "required": False,
    "description": "`respond-async` (RFC 7240): answer 202 with a job, as POST /v1/jobs does;"
                   " other preferences are ignored",
    "schema": {"type": "string"}, "examples": {"async": {"value": "respond-async"}},
}

JOB_CREATED: dict[str, Any] = {
    "model": JobView, "description": "the job was accepted",
    "headers": {"Location": _required(_header("the job's URL", {"type": "string"})),
                "Preference-Applied": _header("`respond-async` when the request sent Prefer",
                                              {"type": "string"})},
}

JOB_EVENT = {
    "type": "object", "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["state", "progress"],
                  "description": "`state` when the state changed, else `progress`"},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": "#/components/schemas/JobView"}},
    },
}
"""One server-sent event of GET /v1/jobs/{id}/events (keep-alive comments are not events)."""

SERVER_ERROR = {500: _error("`inference_failed`, `internal_error`: the server's fault; the"
                            " detail names the request id, the exception is in the server log")}
DRAINING = {503: _error("`draining`: the server is shutting down",
                        {"Retry-After": _required(RETRY_AFTER)})}
UPLOAD_ERRORS = {
    400: _error("`empty_body`, `invalid_image` (garbage, truncated, corrupt PNG chunk),"
                " `invalid_multipart`, `missing_file`, `multiple_files`"),
    408: _error("`request_timeout`, `upload_too_slow`: the body did not arrive in time",
                {"Connection": _header("`close`", {"type": "string"}, required=True)}),
    413: _error("`payload_too_large` (max_upload_bytes), `image_too_large` (max_pixels, input or"
                " output), `too_large_for_memory` (memory_budget_mb)"),
    415: _error("`unsupported_media_type` (not image/* or multipart), `unsupported_image`"
                " (GIF, ICO, PSD …)"),
}
SUBMIT_ERRORS = {
    404: _error("`unknown_task`: the detail lists the served tasks"),
    422: _error("`invalid_parameter`: a bad query value (the detail names it);"
                " `unsupported_format`: an output the format cannot store"),
    503: _error("`not_ready`, `draining`, `queue_full`, `jobs_unavailable`",
                {"Retry-After": _required(RETRY_AFTER)}),
    504: _error("`timeout`: not started or finished within request_timeout_s"),
}
JOB_ERRORS = {
    404: _error("`job_not_found`: unknown, expired or evicted"),
    503: _error("`jobs_unavailable`: the job store is unreachable; `draining`",
                {"Retry-After": _required(RETRY_AFTER)}),
}
CONFLICT = {409: _error("`job_not_finished` (with Retry-After), `job_failed`, `job_cancelled`;"
                        " `job_finished` for a cancel", {"Retry-After": RETRY_AFTER})}
NOT_READY = {503: _error("`not_ready`: models are loading or failed to load; `draining`",
                         {"Retry-After": _required(RETRY_AFTER)})}
