"""Async jobs over HTTP against a live server with the tiny fixture models (local job store)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from serving import LiveServer, make_models_dir, png_bytes, random_image

SETTINGS: dict[str, Any] = {"tile_size": 32, "tile_overlap": 8, "max_queue_delay_ms": 5.0,
                            "max_batch": 4}
PNG = {"Content-Type": "image/png"}
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_models_dir(tmp_path_factory.mktemp("jobs"))


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(models, **SETTINGS, job_dir=tmp_path_factory.mktemp("store"),
                    job_webhook_hosts=["127.0.0.1"], job_webhook_backoff_s=0.05) as srv:
        yield srv


def _submit(base: str, data: bytes, **params: Any) -> httpx.Response:
    return httpx.post(f"{base}/v1/jobs", params={"task": "derain", **params}, content=data,
                      headers=PNG, timeout=30)


def _events(base: str, job_id: str, timeout: float = 60) -> list[tuple[str, dict]]:
    """Every (event, data) of the stream, read live until the server ends it."""
    out: list[tuple[str, dict]] = []
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                assert event is not None
                out.append((event, json.loads(line[len("data: "):])))
    return out


def _wait(base: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
        if status["state"] in TERMINAL:
            return status
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} not finished: {status}")


def _wait_running(server: LiveServer, job_id: str) -> None:
    """Until the job's tiles wait in the batcher (the test then acts mid-job)."""
    batcher = server.app.state.service.tasks["derain"].batcher
    deadline = time.monotonic() + 30
    while batcher.queue_depth == 0:
        assert time.monotonic() < deadline, "the job never queued tiles"
        time.sleep(0.005)
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}").json()["state"] == "running"


def test_submit_events_result_equal_synchronous_restore(server: LiveServer) -> None:
    data = png_bytes(random_image(48, 40, seed=3))
    query = {"seed": 7, "steps": 3}
    sync = httpx.post(f"{server.url}/restore", params={"task": "derain", **query}, content=data,
                      headers=PNG, timeout=60)
    assert sync.status_code == 200

    r = _submit(server.url, data, **query)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and job["params"]["seed"] == 7

    events = _events(server.url, job["id"])
    states = [d["state"] for e, d in events if e == "state"]
    assert states[-1] == "succeeded"
    order = ["queued", "running", "succeeded"]
    assert [order.index(s) for s in states] == sorted({order.index(s) for s in states})
    assert all(e in ("state", "progress") for e, _ in events)
    final = events[-1][1]
    progress = final["progress"]
    # 48x40 with 32 px tiles and 8 overlap: 2x2 tiles; S=3 visits four timesteps (as the
    # release does), so 4 rounds of 4 passes.
    assert progress == {"passes_done": 16, "passes_total": 16, "tiles": 4, "step": 4,
                        "steps": 4, "fraction": 1.0}
    done = [d["progress"]["passes_done"] for _, d in events]
    assert done == sorted(done)
    assert final["timings"]["run_s"] > 0 and final["error"] is None

    result = httpx.get(f"{server.url}{final['links']['result']}", timeout=10)
    assert result.status_code == 200
    assert result.content == sync.content
    assert result.headers["content-type"] == "image/png"
    for header in ("x-seed", "x-steps", "x-tiles"):
        assert result.headers[header] == sync.headers[header]
    assert "compute;dur=" in result.headers["server-timing"]


def test_prefer_respond_async_on_restore_makes_a_job(server: LiveServer) -> None:
    data = png_bytes(random_image(24, 24, seed=4))
    r = httpx.post(f"{server.url}/restore", params={"task": "denoise", "seed": 1, "steps": 2},
                   content=data, headers={**PNG, "Prefer": "wait=5, respond-async"}, timeout=30)
    assert r.status_code == 202 and r.headers["preference-applied"] == "respond-async"
    location = r.headers["location"]
    assert _wait(server.url, r.json()["id"])["state"] == "succeeded"
    result = httpx.get(f"{server.url}{location}/result", timeout=10)
    sync = httpx.post(f"{server.url}/restore", params={"task": "denoise", "seed": 1, "steps": 2},
                      content=data, headers=PNG, timeout=60)
    assert result.content == sync.content


def test_cancel_removes_queued_tiles_from_the_batcher(server: LiveServer) -> None:
    batcher = server.app.state.service.tasks["derain"].batcher
    cancelled_before = batcher.stats()["cancelled"]
    # 81 tiles x 50 steps at 4 tiles per pass: far longer than the test.
    r = _submit(server.url, png_bytes(random_image(200, 200)), steps=50, seed=0)
    job_id = r.json()["id"]
    _wait_running(server, job_id)

    early = httpx.get(f"{server.url}/v1/jobs/{job_id}/result")
    assert early.status_code == 409 and early.json()["error"] == "job_not_finished"

    gone = httpx.delete(f"{server.url}/v1/jobs/{job_id}", timeout=15)
    assert gone.status_code == 200, gone.text
    assert gone.json()["state"] == "cancelled"
    assert gone.json()["error"]["error"] == "cancelled"
    assert batcher.queue_depth == 0
    assert batcher.stats()["cancelled"] > cancelled_before
    ran = batcher.stats()["items"]
    time.sleep(0.3)
    assert batcher.stats()["items"] <= ran + 4  # at most the batch already running finished

    result = httpx.get(f"{server.url}/v1/jobs/{job_id}/result")
    assert result.status_code == 409 and result.json()["error"] == "job_cancelled"
    again = httpx.delete(f"{server.url}/v1/jobs/{job_id}")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
    # The events of a finished job: its final state, then the stream ends.
    assert [(e, d["state"]) for e, d in _events(server.url, job_id)] == [("state", "cancelled")]


def test_errors_are_json_with_our_shape(server: LiveServer) -> None:
    base = server.url
    missing = httpx.get(f"{base}/v1/jobs/{'0' * 32}")
    assert missing.status_code == 404 and missing.json()["error"] == "job_not_found"
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/result", "/v1/jobs/nope/events"):
        r = httpx.get(f"{base}{path}")
        assert r.status_code == 404 and r.json()["error"] == "job_not_found", path
    assert httpx.delete(f"{base}/v1/jobs/{'0' * 32}").status_code == 404

    bad = _submit(base, b"not an image")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_image"
    unknown = httpx.post(f"{base}/v1/jobs", params={"task": "nope"},
                         content=png_bytes(random_image(8, 8)), headers=PNG)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_task"
    steps = _submit(base, png_bytes(random_image(8, 8)), steps=0)
    assert steps.status_code == 422 and "steps" in steps.json()["detail"]
    for url in ("http://10.0.0.1/hook", "ftp://127.0.0.1/x", "not a url"):
        hook = _submit(base, png_bytes(random_image(8, 8)), webhook=url)
        assert hook.status_code == 422 and hook.json()["error"] == "invalid_parameter", url

    done = _submit(base, png_bytes(random_image(16, 16)), steps=1).json()["id"]
    assert _wait(base, done)["state"] == "succeeded"
    finished = httpx.delete(f"{base}/v1/jobs/{done}")
    assert finished.status_code == 409 and finished.json()["error"] == "job_finished"


class _Hooks(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first POST and 200 after: the delivery must retry."""

    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append(body)
        self.send_response(503 if len(type(self).received) == 1 else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_is_posted_with_retries(server: LiveServer) -> None:
    hooks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    thread = threading.Thread(target=hooks.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{hooks.server_address[1]}/done"
        job_id = _submit(server.url, png_bytes(random_image(16, 16)), steps=1,
                         webhook=url).json()["id"]
        assert _wait(server.url, job_id)["state"] == "succeeded"
        deadline = time.monotonic() + 10
        while len(_Hooks.received) < 2:
            assert time.monotonic() < deadline, _Hooks.received
            time.sleep(0.02)
        assert [b["id"] for b in _Hooks.received] == [job_id, job_id]
        assert _Hooks.received[-1]["state"] == "succeeded"
        assert _Hooks.received[-1]["links"]["result"] == f"/v1/jobs/{job_id}/result"
    finally:
        hooks.shutdown()
        hooks.server_close()


def test_results_expire_after_the_ttl_and_the_job_queue_is_capped(models: Path) -> None:
    with LiveServer(models, **SETTINGS, job_ttl_s=2.0, job_queue_size=1) as srv:
        done = _submit(srv.url, png_bytes(random_image(16, 16)), steps=1).json()["id"]
        status = _wait(srv.url, done)
        assert status["expires_at"] == pytest.approx(status["finished_at"] + 2.0)
        fetched = httpx.get(f"{srv.url}/v1/jobs/{done}/result")
        if time.time() < status["expires_at"]:  # (a very busy machine may already be past it)
            assert fetched.status_code == 200

        slow = _submit(srv.url, png_bytes(random_image(200, 200)), steps=50).json()["id"]
        full = _submit(srv.url, png_bytes(random_image(16, 16)), steps=1)
        assert full.status_code == 503 and full.json()["error"] == "queue_full"
        assert int(full.headers["retry-after"]) >= 1
        assert httpx.delete(f"{srv.url}/v1/jobs/{slow}", timeout=15).status_code == 200

        time.sleep(max(0.0, status["expires_at"] - time.time()) + 0.1)
        assert httpx.get(f"{srv.url}/v1/jobs/{done}").status_code == 404
        assert httpx.get(f"{srv.url}/v1/jobs/{done}/result").status_code == 404
        ok = _submit(srv.url, png_bytes(random_image(16, 16)), steps=1)
        assert ok.status_code == 202
