"""``service.client`` (sync and asyncio) against a live server with the tiny fixture models."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from PIL import Image
from serving import LiveServer, make_models_dir, png_bytes, random_image

from service.client import (
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    JobCancelled,
    NotFound,
    RateLimited,
    ServiceError,
    Unauthorized,
    Unavailable,
)

SETTINGS: dict[str, Any] = {"tile_size": 32, "tile_overlap": 8, "max_batch": 4,
                            "job_queue_size": 1}
LONG = {"steps": 50, "seed": 0}  # with a 200x200 image: far longer than any test


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(make_models_dir(tmp_path_factory.mktemp("client")), **SETTINGS) as srv:
        yield srv


def _direct(server: LiveServer, data: bytes, **params: Any) -> bytes:
    r = httpx.post(f"{server.url}/restore", params={"task": "derain", **params}, content=data,
                   headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200
    return r.content


def test_restore_from_bytes_path_and_pil(server: LiveServer, tmp_path: Path) -> None:
    array = random_image(40, 48, seed=2)
    data = png_bytes(array)
    expected = _direct(server, data, steps=2, seed=5)
    path = tmp_path / "in.png"
    path.write_bytes(data)
    with Client(server.url, timeout=60) as client:
        assert client.restore(data, task="derain", steps=2, seed=5) == expected
        assert client.restore(str(path), task="derain", steps=2, seed=5) == expected
        assert client.restore(path, task="derain", steps=2, seed=5) == expected
        assert client.restore(Image.fromarray(array), task="derain", steps=2, seed=5) == expected
        jpeg = client.restore(data, task="derain", steps=1, seed=5, format="jpeg", tile=32)
        assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
        tasks = {t["task"]: t for t in client.tasks()}
        assert set(tasks) == {"derain", "denoise"} and tasks["derain"]["kind"] == "diffusion"


def test_submit_events_wait_and_cancel(server: LiveServer) -> None:
    data = png_bytes(random_image(40, 48, seed=3))
    expected = _direct(server, data, steps=3, seed=9)
    with Client(server.url, timeout=60) as client:
        job = client.submit(data, task="derain", steps=3, seed=9)
        assert job.location == f"/v1/jobs/{job.id}" and job.state in ("queued", "running")
        events = list(client.events(job))
        assert events[-1]["event"] == "state" and events[-1]["state"] == "succeeded"
        assert events[-1]["progress"]["fraction"] == 1.0
        assert client.status(job.id)["state"] == "succeeded"
        assert client.wait(job, timeout=30) == expected

        slow = client.submit(png_bytes(random_image(200, 200)), **LONG)
        with pytest.raises(Conflict) as early:
            client.result(slow)
        assert early.value.status == 409 and early.value.error == "job_not_finished"
        assert client.cancel(slow)["state"] == "cancelled"
        with pytest.raises(JobCancelled) as cancelled:
            client.wait(slow, timeout=10)
        assert cancelled.value.error == "cancelled"


def test_async_client(server: LiveServer) -> None:
    data = png_bytes(random_image(40, 48, seed=4))
    expected = _direct(server, data, steps=2, seed=3)

    async def main() -> None:
        async with AsyncClient(server.url, timeout=60) as client:
            assert await client.restore(data, task="derain", steps=2, seed=3) == expected
            job = await client.submit(data, task="derain", steps=2, seed=3)
            states = [e["state"] async for e in client.events(job.id)]
            assert states[-1] == "succeeded"
            assert await client.wait(job, timeout=30) == expected
            assert (await client.status(job))["progress"]["fraction"] == 1.0
            assert len(await client.tasks()) == 2
            with pytest.raises(NotFound):
                await client.status("0" * 32)
            slow = await client.submit(png_bytes(random_image(200, 200)), **LONG)
            assert (await client.cancel(slow))["state"] == "cancelled"

    asyncio.run(main())


def test_typed_errors(server: LiveServer) -> None:
    with Client(server.url, timeout=30, retries=0) as client:
        with pytest.raises(NotFound) as unknown:
            client.restore(png_bytes(random_image(8, 8)), task="nope")
        assert unknown.value.status == 404 and unknown.value.error == "unknown_task"
        assert "derain" in unknown.value.detail
        with pytest.raises(InvalidRequest) as garbage:
            client.restore(b"not an image", task="derain")
        assert garbage.value.status == 400 and garbage.value.error == "invalid_image"
        with pytest.raises(InvalidRequest) as steps:
            client.submit(png_bytes(random_image(8, 8)), task="derain", steps=0)
        assert steps.value.status == 422 and "steps" in steps.value.detail
        with pytest.raises(NotFound) as job:
            client.status("f" * 32)
        assert job.value.error == "job_not_found"
        with pytest.raises(TypeError):
            client.restore(12345, task="derain")  # type: ignore[arg-type]
    with Client("http://127.0.0.1:1", timeout=2, retries=1) as dead, \
            pytest.raises(Unavailable) as refused:
        dead.tasks()
    assert refused.value.status is None and refused.value.error == "connection_failed"


def test_503_is_retried_after_retry_after(server: LiveServer,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """The server holds one unfinished job at most: a second submit gets 503 queue_full with
    Retry-After until the first ends; the client waits that long and gets in."""
    with Client(server.url, timeout=30, retries=0) as impatient, \
            Client(server.url, timeout=30, retries=3) as patient:
        blocker = impatient.submit(png_bytes(random_image(200, 200)), **LONG)
        with pytest.raises(Unavailable) as full:
            impatient.submit(png_bytes(random_image(16, 16)), steps=1)
        assert full.value.status == 503 and full.value.error == "queue_full"
        assert full.value.retry_after is not None and full.value.retry_after >= 1

        threading.Timer(0.5, impatient.cancel, args=(blocker,)).start()
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="service.client"):
            job = patient.submit(png_bytes(random_image(16, 16)), steps=1)
        assert time.monotonic() - started >= full.value.retry_after * 0.9
        assert "503 queue_full; retrying in" in caplog.text
        assert patient.wait(job, timeout=30)[:8] == b"\x89PNG\r\n\x1a\n"


class _Limited(http.server.BaseHTTPRequestHandler):
    """A stand-in front (a rate-limiting proxy): 429 with Retry-After once, then the tasks."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        first = len(type(self).seen) == 1
        body = json.dumps({"error": "rate_limited", "detail": "slow down"} if first else
                          {"tasks": [{"task": "derain"}]}).encode()
        self.send_response(429 if first else 200)
        if first:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_api_key_header_and_429() -> None:
    front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Limited)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{front.server_address[1]}"
    try:
        with Client(url, api_key="secret-key", retries=1) as client:
            assert client.tasks() == [{"task": "derain"}]
        assert [h.get("Authorization") for h in _Limited.seen] == ["Bearer secret-key"] * 2
        _Limited.seen.clear()
        with Client(url, retries=0) as client, pytest.raises(RateLimited) as limited:
            client.tasks()
        assert limited.value.status == 429 and limited.value.retry_after == 0
        assert isinstance(limited.value, ServiceError)
        assert "Authorization" not in _Limited.seen[0]
    finally:
        front.shutdown()
        front.server_close()


def test_api_key_is_sent_and_jobs_belong_to_their_key(tmp_path: Path) -> None:
    from service.auth import create_key

    keys = tmp_path / "api-keys.json"
    alice, _ = create_key(keys, "alice")
    bob, _ = create_key(keys, "bob")
    models = make_models_dir(tmp_path)
    with LiveServer(models, **SETTINGS, api_keys_file=keys) as srv, \
            Client(srv.url, api_key=alice, timeout=60) as mine, \
            Client(srv.url, api_key=bob, timeout=60, retries=0) as other, \
            Client(srv.url, timeout=60, retries=0) as anonymous:
        job = mine.submit(png_bytes(random_image(16, 16)), steps=1, seed=0)
        assert mine.wait(job, timeout=30)[:4] == b"\x89PNG"
        with pytest.raises(NotFound):
            other.status(job)
        with pytest.raises(NotFound):
            other.cancel(job)
        with pytest.raises(Unauthorized) as refused:
            anonymous.status(job)
        assert refused.value.status == 401
        assert mine.status(job)["state"] == "succeeded"
