"""Graceful drain of ``diffmamba serve`` on SIGTERM, against a real server process.

What Kubernetes (and ``docker stop``) relies on: after SIGTERM the pod must stop being ready at
once, finish every request it already accepted, refuse new ones with a retryable 503, and exit
0 — not be killed mid-request.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from serving import make_models_dir, png_bytes, random_image

from service.api.drain import SHUTDOWN_GRACE_S, DrainingServer
from service.api.state import ServiceState
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SLOW_REQUESTS = 4
SLOW_SIZE = 128  # 25 tiles of 32 px: with 5 steps about 1 s alone, 2-5 s for four at once (CPU)
SLOW_STEPS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _in_flight(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "diffmamba_requests_in_flight" for sample in family.samples)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with _serve(tmp_path, DIFFMAMBA_DRAIN_TIMEOUT_S="60") as started:
        yield started


@contextlib.contextmanager
def _serve(tmp_path: Path, **env_overrides: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "DIFFMAMBA_TILE_SIZE": "32", "DIFFMAMBA_TILE_OVERLAP": "8",
           "DIFFMAMBA_MAX_QUEUE_DELAY_MS": "20", "DIFFMAMBA_MAX_BATCH": "16", **env_overrides}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port),
         "--models", str(make_models_dir(tmp_path)), "--device", "cpu", "--log-level", "info"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready within 60 s"
            time.sleep(0.05)
        yield proc, base
    finally:
        if proc.poll() is None:  # only the process this fixture started
            proc.kill()
            proc.wait(timeout=10)


def test_sigterm_drains_accepted_requests_then_exits_0(
        server: tuple[subprocess.Popen[str], str]) -> None:
    proc, base = server
    results: list[httpx.Response | BaseException] = []

    def slow_request(seed: int) -> None:
        try:
            data = png_bytes(random_image(SLOW_SIZE, SLOW_SIZE, seed=seed))
            results.append(httpx.post(
                f"{base}/restore", params={"task": "derain", "steps": SLOW_STEPS, "seed": seed},
                content=data, headers={"Content-Type": "image/png"}, timeout=60,
            ))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=slow_request, args=(i,)) for i in range(SLOW_REQUESTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while _in_flight(base) < SLOW_REQUESTS:  # every request accepted before the signal
        assert time.monotonic() < deadline, "requests never got in flight"
        time.sleep(0.02)

    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # the handler runs when the main loop wakes (at most its 0.1 s tick)

    ready = httpx.get(f"{base}/readyz", timeout=5)
    assert ready.status_code == 503 and "draining" in ready.json()["detail"]
    refused = httpx.post(f"{base}/restore", params={"task": "derain", "steps": 1},
                         content=png_bytes(random_image(16, 16)),
                         headers={"Content-Type": "image/png"}, timeout=10)
    assert refused.status_code == 503 and refused.json()["error"] == "draining"
    assert int(refused.headers["retry-after"]) >= 1
    assert _in_flight(base) > 0, "the slow requests finished before the checks: not a drain test"

    for t in threads:
        t.join(timeout=60)
    assert len(results) == SLOW_REQUESTS
    for r in results:
        assert isinstance(r, httpx.Response), f"accepted request lost: {r!r}"
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (SLOW_SIZE, SLOW_SIZE)

    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "draining" in out and "drained" in out
    with pytest.raises(httpx.HTTPError):  # and the port is closed afterwards
        httpx.get(f"{base}/healthz", timeout=1)


def test_drain_timeout_answers_json_503_and_exits_0(tmp_path: Path) -> None:
    """Requests still running when the drain runs out of time get a retryable JSON 503, not
    uvicorn's plain-text 500 from cancelling them."""
    with _serve(tmp_path, DIFFMAMBA_DRAIN_TIMEOUT_S="1") as (proc, base):
        results: list[httpx.Response | BaseException] = []

        def endless() -> None:  # 25 tiles x 50 steps: far longer than the drain timeout
            try:
                results.append(httpx.post(
                    f"{base}/restore", params={"task": "derain", "steps": 50, "seed": 0},
                    content=png_bytes(random_image(SLOW_SIZE, SLOW_SIZE)),
                    headers={"Content-Type": "image/png", "X-Request-ID": "cut-off-1"},
                    timeout=60))
            except BaseException as exc:
                results.append(exc)

        client = threading.Thread(target=endless)
        client.start()
        deadline = time.monotonic() + 20
        while _in_flight(base) < 1:
            assert time.monotonic() < deadline, "the request never got in flight"
            time.sleep(0.02)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        client.join(timeout=30)
        answered = time.monotonic() - signalled
        out, _ = proc.communicate(timeout=30)
        (r,) = results
        assert isinstance(r, httpx.Response), f"no answer: {r!r}\n{out}"
        assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
        assert r.json()["error"] == "draining" and int(r.headers["retry-after"]) >= 1
        assert r.headers["x-request-id"] == "cut-off-1"
        assert answered < 1 + 3, f"answered {answered:.1f} s after SIGTERM"
        assert proc.returncode == 0, out
        assert "drain timeout" in out
        assert "Traceback" not in out and "Exception in ASGI application" not in out, out


def _state(drain_timeout: float) -> ServiceState:
    return ServiceState(Settings(models_dir=REPO / "models", drain_timeout_s=drain_timeout))


def _server(state: ServiceState) -> DrainingServer:
    import uvicorn

    return DrainingServer(uvicorn.Config(lambda *a: None), state)


def test_first_signal_drains_second_forces_exit() -> None:
    state = _state(30)
    srv = _server(state)
    state.in_flight = 2
    srv.handle_exit(signal.SIGTERM, None)
    assert state.draining and not srv.should_exit and not srv.force_exit
    assert srv._captured_signals == []  # not re-raised later: the drained exit is status 0
    srv.handle_exit(signal.SIGINT, None)
    assert srv.should_exit and srv.force_exit
    assert srv._captured_signals == [signal.SIGINT]  # a forced exit still dies by its signal


def test_drain_ends_when_idle_or_at_the_timeout() -> None:
    import asyncio

    state = _state(30)
    srv = _server(state)
    state.in_flight = 1
    assert asyncio.run(srv.on_tick(1)) is False  # not draining: keep serving
    srv.begin_drain()
    assert asyncio.run(srv.on_tick(2)) is False  # draining, one request still running
    state.in_flight = 0
    assert asyncio.run(srv.on_tick(3)) is True and srv.should_exit

    state = _state(0.0)  # the timeout ends the drain even with work in flight:
    srv = _server(state)
    state.in_flight = 3
    srv.begin_drain()
    assert asyncio.run(srv.on_tick(1)) is False  # first the requests are cut off (503)...
    assert srv._cut_off_at is not None
    srv._cut_off_at -= SHUTDOWN_GRACE_S  # ...then, a grace later, the server stops regardless
    assert asyncio.run(srv.on_tick(2)) is True
    assert state.drain_time_left() == 0.0


def test_drain_timeout_ends_streams_and_answers_waiting_requests(tmp_path: Path) -> None:
    """In process: a stream still open and a request still waiting when the drain runs out."""
    import asyncio

    from fastapi.responses import StreamingResponse

    from service.api import create_app
    from service.api.connection import server_config

    (tmp_path / "models").mkdir()
    settings = Settings(models_dir=tmp_path / "models", device="cpu", drain_timeout_s=0.5)
    app = create_app(settings)

    async def forever() -> StreamingResponse:
        async def events():  # type: ignore[no-untyped-def]
            while True:
                yield b"data: tick\n\n"
                await asyncio.sleep(0.05)
        return StreamingResponse(events(), media_type="text/event-stream")

    async def waiting() -> None:
        await asyncio.sleep(3600)

    app.add_api_route("/test-stream", forever)
    app.add_api_route("/test-wait", waiting)
    port = _free_port()
    srv = DrainingServer(server_config(app, settings, "127.0.0.1", port, "warning"),
                         app.state.service)
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logging.getLogger("uvicorn.error").addHandler(handler)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not srv.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        answers: dict[str, object] = {}

        def wait() -> None:
            answers["wait"] = httpx.get(f"{base}/test-wait", timeout=30)

        def stream() -> None:
            with httpx.stream("GET", f"{base}/test-stream", timeout=30) as r:
                answers["ticks"] = sum(1 for line in r.iter_lines() if line == "data: tick")

        clients = [threading.Thread(target=wait), threading.Thread(target=stream)]
        for c in clients:
            c.start()
        while app.state.service.in_flight < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        srv.begin_drain("test")
        for c in clients:
            c.join(timeout=30)
        thread.join(timeout=30)
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
        srv.should_exit = True
    assert not thread.is_alive()
    waited = answers["wait"]
    assert isinstance(waited, httpx.Response) and waited.status_code == 503
    assert waited.json()["error"] == "draining" and waited.headers["retry-after"] == "1"
    assert isinstance(answers["ticks"], int) and answers["ticks"] > 0  # ended, not broken
    assert not errors, [r.getMessage() for r in errors]
