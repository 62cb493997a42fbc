"""The OpenAPI document is the contract: Schemathesis, with every check, against a live server.

A real uvicorn server with tiny fixture models of three kinds (``derain``: Diff-Mamba diffusion,
``denoise``: VmambaIR single pass, ``sr``: VmambaIR ×4) answers generated requests: every
operation, positive and negative values, boundary values, missing parameters, undeclared
methods, and image bodies drawn from real tiny PNG/JPEG files and broken ones (truncated, wrong
magic number, bad PNG CRC), raw and as multipart. Each answer must have a documented status,
content type, headers and body schema, no 5xx, and the image bodies must be judged by content:
every real image restored, every broken one refused with ``invalid_image``.

``DIFFMAMBA_CONTRACT_EXAMPLES`` raises the examples per operation for a longer run (README,
"API contract").
"""

from __future__ import annotations

import copy
import io
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.engine import Status, events
from serving import FIXTURES, LiveServer

from service.api import create_app
from service.api.schemas import IMAGE_INPUT_TYPES
from service.auth import create_key
from service.jobs import WebhookRefusedError, check_webhook_url
from service.settings import Settings

EXAMPLES = int(os.environ.get("DIFFMAMBA_CONTRACT_EXAMPLES", "8"))
SEED = int(os.environ.get("DIFFMAMBA_CONTRACT_SEED", "1"))  # the same requests each run
SETTINGS = {"tile_size": 32, "tile_overlap": 8, "max_batch": 4, "max_queue_delay_ms": 2.0,
            "job_concurrency": 2, "drain_timeout_s": 1.0, "request_timeout_s": 120.0,
            # webhooks are offered (and refused to other hosts); .invalid never resolves
            "job_webhook_hosts": ["hooks.invalid"], "job_webhook_retries": 0,
            # a long run submits jobs faster than two workers finish them: room for all, so a
            # 503 queue_full (an overload answer, documented) does not read as a server error
            "job_queue_size": 4096}
MODELS = {"derain": FIXTURES / "diffmamba" / "tiny_withbias_checkpoint.pth",
          "denoise": FIXTURES / "vmambair" / "tiny_checkpoint.pth",
          "sr": FIXTURES / "vmambair_sr" / "tiny_checkpoint.pth"}
# Answers that judge the image itself (service.imaging.errors, service.api.body).
IMAGE_ERRORS = frozenset({"invalid_image", "unsupported_image", "empty_body", "image_too_large",
                          "too_large_for_memory"})

# Bodies the strategy made, by kind, so a check can tell what the server was sent.
REAL: set[bytes] = set()
BROKEN: set[bytes] = set()
IMAGE_OUTCOMES: Counter[str] = Counter()  # "real restored", "broken refused"


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def real_images(draw: st.DrawFn) -> bytes:
    """A tiny PNG (RGB, gray or RGBA) or JPEG (RGB or gray), 8–24 px a side."""
    h, w = draw(st.integers(8, 24)), draw(st.integers(8, 24))
    fmt = draw(st.sampled_from(["PNG", "JPEG"]))
    channels = draw(st.sampled_from([1, 3, 4] if fmt == "PNG" else [1, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = (h, w) if channels == 1 else (h, w, channels)
    data = _encode(rng.integers(0, 256, shape, dtype=np.uint8), fmt)
    REAL.add(data)
    return data


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, data length) of each chunk after the signature."""
    chunks, pos = [], 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        chunks.append((pos, length))
        pos += 12 + length
    return chunks


@st.composite
def broken_images(draw: st.DrawFn) -> bytes:
    """A real image cut short, with a wrong magic number, or (PNG) a chunk's CRC broken."""
    data = draw(real_images())
    REAL.discard(data)
    damage = draw(st.sampled_from(["truncate", "magic"] + (["crc"] if data[:4] ==
                                                             b"\x89PNG" else [])))
    if damage == "truncate":
        broken = data[:draw(st.integers(1, len(data) * 9 // 10))]
    elif damage == "magic":
        broken = bytes(4) + data[4:]
    else:
        offset, length = draw(st.sampled_from(_png_chunks(data)))
        at = draw(st.integers(offset + 4, offset + 7 + length))  # type, data or CRC byte
        broken = data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1:]
    BROKEN.add(broken)
    return broken


IMAGES = st.one_of(real_images(), real_images(), broken_images())
schemathesis.openapi.media_type(IMAGE_INPUT_TYPES[0], IMAGES, aliases=IMAGE_INPUT_TYPES[1:])


def _sent_image(case: schemathesis.Case) -> bytes | None:
    body = case.body
    if isinstance(body, dict):
        body = body.get("file")
    return body if isinstance(body, bytes) else None


@schemathesis.check
def images_judged_by_content(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                             case: schemathesis.Case) -> bool | None:
    """A real image is never refused for its content; a broken one is never restored."""
    image = _sent_image(case)
    if image is None:
        return None
    error = None
    if response.status_code >= 400:
        try:
            error = response.json().get("error")
        except ValueError:
            error = None
    if image in REAL and error in IMAGE_ERRORS:
        raise AssertionError(f"a real image was refused: {response.status_code} {error}")
    if image in REAL and response.status_code < 300:
        IMAGE_OUTCOMES["real restored"] += 1
    if image in BROKEN and error == "invalid_image":
        IMAGE_OUTCOMES["broken refused"] += 1
    if image in BROKEN and response.status_code < 300:
        raise AssertionError(f"a broken image was accepted: {response.status_code}")
    if image in BROKEN and case.operation.method.upper() == "POST" and error is None and \
            response.status_code == 400:
        raise AssertionError("a broken image was refused without an error code")
    return None


def _models_dir(root: Path) -> Path:
    models = root / "models"
    models.mkdir()
    for task, checkpoint in MODELS.items():
        shutil.copy(checkpoint, models / f"{task}.pth")
    return models


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(_models_dir(tmp_path_factory.mktemp("contract")), **SETTINGS)
    live.document_before_start = copy.deepcopy(live.app.openapi())  # type: ignore[attr-defined]
    with live:
        yield live


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    """API keys on: a key allowed two of the three tasks, with a rate limit a run exceeds."""
    root = tmp_path_factory.mktemp("contract-keys")
    keys = root / "keys.json"
    key, _ = create_key(keys, "contract", tasks=["derain", "denoise"], rate_per_s=20, burst=20,
                        max_concurrent=2)
    with LiveServer(_models_dir(root), api_keys_file=keys, **SETTINGS) as live:
        yield live, key


def contract_schema(url: str, examples: int, key: str | None = None,
                    **extra: object) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"max-examples": examples},
        "checks": {
            # An image body is a binary string to the schema, which cannot say whether its
            # bytes decode: broken images are schema-valid and refused with 400 (checked to be
            # `invalid_image` for exactly the broken ones by images_judged_by_content).
            "positive_data_acceptance": {"expected-statuses": [
                "2xx", "400", "401", "403", "404", "409", "429"]},
            # DELETE /v1/jobs/{id} cancels: the job stays readable, in state `cancelled`, until
            # job_ttl_s (README, "Async jobs"), where this check expects a 404.
            "use_after_free": {"enabled": False},
        },
        **extra,
    })
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=config, headers=headers)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)  # failures and errors, with curl commands
    checks: Counter[str] = field(default_factory=Counter)  # checks run, by name
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (operation, status)


def run_contract(api_schema: schemathesis.BaseSchema) -> Report:
    """Every phase of a ``schemathesis run`` (examples, coverage, fuzzing, stateful), in this
    process."""
    report = Report()
    for event in schemathesis.engine.from_schema(api_schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for case_id, interaction in recorder.interactions.items():
                if interaction.response is not None and case_id in recorder.cases:
                    label = recorder.cases[case_id].value.operation.label
                    report.statuses[label, interaction.response.status_code] += 1
            for nodes in recorder.checks.values():
                for node in nodes:
                    report.checks[node.name] += 1
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failure = node.failure_info.failure
                        report.problems.append(
                            f"[{event.phase}] {recorder.label}: {node.name}: {failure.title}\n"
                            f"{failure.message}\n{node.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            report.problems.append(f"[{event.phase}] {event.label}: error: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            report.problems.append(f"fatal: {event.exception!r}")
    return report


def _assert_clean(report: Report) -> None:
    problems = report.problems
    assert not problems, f"{len(problems)} failure(s):\n\n" + "\n\n".join(problems[:20])


def test_every_answer_is_documented(server: LiveServer) -> None:
    report = run_contract(contract_schema(server.url, EXAMPLES))
    _assert_clean(report)
    for check in ("not_a_server_error", "status_code_conformance", "response_schema_conformance",
                  "content_type_conformance", "response_headers_conformance",
                  "negative_data_rejection", "positive_data_acceptance", "unsupported_method",
                  "allow_header_conformance", "images_judged_by_content"):
        assert report.checks[check] > 0, f"{check} never ran: {report.checks}"
    # The run reached the decoder and the network: images restored, broken ones refused.
    assert IMAGE_OUTCOMES["real restored"] > 0 and IMAGE_OUTCOMES["broken refused"] > 0, \
        IMAGE_OUTCOMES
    for status in (200, 202, 422):
        assert report.statuses["POST /restore", status] > 0, report.statuses
    # Jobs were created, and the links led to them (a result is 200 or, still running, 409).
    for operation in ("POST /v1/jobs", "DELETE /v1/jobs/{job_id}"):
        assert report.statuses[operation, 202] + report.statuses[operation, 200] > 0, \
            report.statuses
    result = "GET /v1/jobs/{job_id}/result"
    assert report.statuses[result, 200] + report.statuses[result, 409] > 0, report.statuses


def test_every_answer_is_documented_with_api_keys(keyed_server: tuple[LiveServer, str]) -> None:
    live, key = keyed_server
    report = run_contract(contract_schema(
        live.url, max(2, EXAMPLES // 2), key,
        auth={"openapi": {"bearer": {"bearer": key}, "apiKey": {"api_key": key}}}))
    _assert_clean(report)
    assert report.checks["ignored_auth"] > 0, report.checks
    assert report.statuses["POST /restore", 200] > 0, report.statuses
    statuses = {status for (_, status) in report.statuses}
    assert {401, 403} <= statuses, report.statuses


def test_document_reflects_the_server(server: LiveServer) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    restore = doc["paths"]["/restore"]["post"]
    params = {p["name"]: p["schema"] for p in restore["parameters"]}
    assert params["task"]["enum"] == sorted(MODELS)
    assert params["tile"]["minimum"] == SETTINGS["tile_overlap"] + 8
    assert params["tile"]["multipleOf"] == 8
    assert (params["steps"]["minimum"], params["steps"]["maximum"]) == (1, 50)
    assert set(restore["requestBody"]["content"]) == {
        "image/png", "image/jpeg", "image/webp", "image/tiff", "image/bmp",
        "application/octet-stream", "multipart/form-data"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorBody", (method, path, status)
    # Fetched before the models were loaded: the same app said less about `task`.
    early = server.document_before_start  # type: ignore[attr-defined]
    early_task = early["paths"]["/restore"]["post"]["parameters"][0]
    assert early_task["name"] == "task" and "enum" not in early_task["schema"]


def test_document_follows_the_settings(tmp_path: Path) -> None:
    """API keys add 401/429 (and 403 where a task is named) with their headers; webhooks are
    offered only with allowed hosts."""
    keys = tmp_path / "keys.json"
    create_key(keys, "k")
    doc = create_app(Settings(models_dir=tmp_path, device="cpu", api_keys_file=keys)).openapi()
    restore = doc["paths"]["/restore"]["post"]
    assert {"401", "403", "429"} <= set(restore["responses"])
    assert restore["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert restore["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "403" not in doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert "401" not in doc["paths"]["/healthz"]["get"]["responses"]  # exempt: probes
    jobs = doc["paths"]["/v1/jobs"]["post"]
    assert "webhook" not in {p["name"] for p in jobs["parameters"]}

    doc = create_app(Settings(models_dir=tmp_path, device="cpu",
                              job_webhook_hosts=["hooks.example.com"])).openapi()
    params = {p["name"]: p for p in doc["paths"]["/v1/jobs"]["post"]["parameters"]}
    pattern = re.compile(params["webhook"]["schema"]["pattern"])
    assert pattern.search("https://hooks.example.com/done?job=1")
    assert not pattern.search("https://evil.example.org/")
    assert "401" not in doc["paths"]["/restore"]["post"]["responses"]


def test_405_names_every_method_of_the_path(server: LiveServer) -> None:
    r = httpx.request("OPTIONS", f"{server.url}/v1/jobs/{'0' * 32}")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert set(r.headers["allow"].split(", ")) == {"DELETE", "GET"}


@pytest.mark.parametrize("url", ["http://hooks.invalid/a\x19b", "http://hooks.invalid/a b",
                                 "https://hooks.invalid/\x7f"])
def test_webhook_with_control_characters_is_refused_at_submit(url: str) -> None:
    """The HTTP client refuses such a URL only when the job ends, in a background task."""
    with pytest.raises(WebhookRefusedError):
        check_webhook_url(url, ["hooks.invalid"])
