"""Slow and idle clients against a real server: every one is answered or cut off in bounded time.

The server runs with the configuration ``diffmamba serve`` uses (``server_config``: the guarded
h11 protocol, keep-alive and header limits) on a free loopback port, with timeouts of about a
second so each case takes about that long.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from serving import LiveServer, make_models_dir, png_bytes, random_image

from service.api import create_app
from service.api.connection import server_config
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
LIMITS = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "min_upload_rate": 200.0,
          "keep_alive_timeout_s": 0.5, "max_connections": 8, "max_header_bytes": 4096}
SLACK_S = 1.5  # scheduling slack on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GuardedServer:
    """``create_app`` + ``server_config`` (what ``diffmamba serve`` runs), in a thread."""

    def __init__(self, models: Path, **overrides: object) -> None:
        self.port = _free_port()
        settings = Settings(models_dir=models, device="cpu", **{**LIMITS, **overrides})
        self.app = create_app(settings)
        self.server = uvicorn.Server(server_config(self.app, settings, "127.0.0.1", self.port,
                                                   "warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> GuardedServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server not ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedServer]:
    with GuardedServer(make_models_dir(tmp_path_factory.mktemp("timeouts"))) as srv:
        yield srv


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit_s} s; got {data[:200]!r}")
    except ConnectionResetError:
        pass
    return data, time.monotonic() - start


def _json_response(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, json.loads(body)


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def _restore_head(length: int, extra: str = "") -> bytes:
    return (f"POST /restore?task=derain&steps=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: image/png\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


def test_declared_length_that_never_arrives_is_408_json(server: GuardedServer) -> None:
    body = png_bytes(random_image(16, 16))
    before = _metric(server.url, 'diffmamba_requests_total{status="408"')
    with _connect(server.port) as sock:
        sock.sendall(_restore_head(len(body) + 1000) + body)
        raw, took = _read_until_closed(sock, LIMITS["body_timeout_s"] + SLACK_S)
    status, headers, payload = _json_response(raw)
    assert status == 408 and payload["error"] == "request_timeout", payload
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert "Content-Length" in payload["detail"]
    assert took < LIMITS["body_timeout_s"] + SLACK_S
    assert _metric(server.url, 'diffmamba_requests_total{status="408"') == before + 1


def test_slow_loris_body_is_408_below_the_minimum_rate(server: GuardedServer) -> None:
    body = png_bytes(random_image(16, 16))
    with _connect(server.port) as sock:
        sock.sendall(_restore_head(len(body)))
        start = time.monotonic()
        sock.settimeout(0.3)
        raw = b""
        for byte in body:  # one byte every 0.3 s: never idle for body_timeout_s, but ~3 B/s
            try:
                sock.sendall(bytes([byte]))
                raw += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if raw:
                break
            assert time.monotonic() - start < 10, "still reading a 3 B/s upload after 10 s"
        rest, _ = _read_until_closed(sock, SLACK_S)
    status, _, payload = _json_response(raw + rest)
    assert status == 408 and payload["error"] == "upload_too_slow", payload
    assert "bytes/s" in payload["detail"]
    assert time.monotonic() - start < LIMITS["body_timeout_s"] + 2 * SLACK_S


def test_slow_loris_headers_get_408_and_the_connection_closed(server: GuardedServer) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40
    with _connect(server.port) as sock:
        start = time.monotonic()
        sock.settimeout(0.25)
        raw = b""
        for byte in head:  # one byte every 0.25 s: each byte arrives well within any idle limit
            try:
                sock.sendall(bytes([byte]))
                raw += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if raw:
                break
        took = time.monotonic() - start
        rest, _ = _read_until_closed(sock, SLACK_S)
    status, headers, payload = _json_response(raw + rest)
    assert status == 408 and payload["error"] == "request_timeout"
    assert headers["connection"] == "close"
    assert took < LIMITS["header_timeout_s"] + SLACK_S


def test_silent_and_surplus_connections_are_closed(server: GuardedServer) -> None:
    """Half-open connections: over max_connections answered 503 at once, the rest closed
    after header_timeout_s; the server then serves normally."""
    socks = [_connect(server.port) for _ in range(LIMITS["max_connections"] + 6)]
    try:
        time.sleep(0.3)
        refused, closed_later = [], []
        start = time.monotonic()
        for sock in socks:
            data, _ = _read_until_closed(sock, LIMITS["header_timeout_s"] + SLACK_S)
            (refused if data else closed_later).append((data, time.monotonic() - start))
        assert len(refused) >= 6
        for data, _ in refused:
            status, headers, payload = _json_response(data)
            assert status == 503 and payload["error"] == "too_many_connections"
            assert headers["retry-after"] == "1"
        assert closed_later, "every connection was refused: the cap counted wrong"
        assert all(t < LIMITS["header_timeout_s"] + SLACK_S for _, t in closed_later)
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_idle_keep_alive_connection_is_closed(server: GuardedServer) -> None:
    with _connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data, took = _read_until_closed(sock, LIMITS["keep_alive_timeout_s"] + SLACK_S)
    assert data.startswith(b"HTTP/1.1 200")
    assert took < LIMITS["keep_alive_timeout_s"] + SLACK_S


def test_oversized_and_malformed_requests_get_json_errors(server: GuardedServer) -> None:
    with _connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        data, _ = _read_until_closed(sock, SLACK_S)
    status, _, payload = _json_response(data)
    assert status == 431 and payload["error"] == "headers_too_large"
    with _connect(server.port) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data, _ = _read_until_closed(sock, SLACK_S)
    status, _, payload = _json_response(data)
    assert status == 400 and payload["error"] == "invalid_http"


def test_normal_upload_is_unaffected(server: GuardedServer) -> None:
    r = httpx.post(f"{server.url}/restore", params={"task": "derain", "steps": 1},
                   content=png_bytes(random_image(16, 16)),
                   headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200, r.text


def test_body_timeout_holds_under_plain_uvicorn(tmp_path: Path) -> None:
    """The body limits live in the app (ASGI), so a stock uvicorn server enforces them too."""
    body = png_bytes(random_image(16, 16))
    with LiveServer(make_models_dir(tmp_path), body_timeout_s=1.0) as srv, \
            _connect(srv.port) as sock:
        sock.sendall(_restore_head(len(body) + 500) + body)
        raw, _ = _read_until_closed(sock, 1.0 + SLACK_S)
    status, _, payload = _json_response(raw)
    assert status == 408 and payload["error"] == "request_timeout"


def test_diffmamba_serve_applies_the_header_timeout(tmp_path: Path) -> None:
    """The CLI wiring: `diffmamba serve` runs the guarded protocol with the settings."""
    (tmp_path / "models").mkdir()  # no checkpoints: the server answers, models never load
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFMAMBA_HEADER_TIMEOUT_S": "1",
           "DIFFMAMBA_MAX_CONNECTIONS": "4"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port),
         "--models", str(tmp_path / "models"), "--device", "cpu", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        with _connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            data, took = _read_until_closed(sock, 1.0 + SLACK_S)
        status, _, payload = _json_response(data)
        assert status == 408 and payload["error"] == "request_timeout"
        assert took < 1.0 + SLACK_S
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
