"""The HTTP API against the small fixture checkpoints."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serving import make_models_dir, png_bytes, random_image, started_client, wait_ready

SETTINGS = {"tile_size": 32, "tile_overlap": 8, "max_queue_delay_ms": 20.0, "max_batch": 16}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    models = make_models_dir(tmp_path_factory.mktemp("api"))
    with started_client(models, **SETTINGS) as c:
        wait_ready(c)
        yield c


def _restore(client: TestClient, data: bytes, **params: object) -> tuple[int, bytes, dict]:
    query = {"task": "derain", "seed": 1, "steps": 2, **params}
    r = client.post("/restore", params=query, content=data,
                    headers={"Content-Type": "image/png"})
    return r.status_code, r.content, dict(r.headers)


def test_health_ready_tasks_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json()["tasks"] == ["denoise", "derain"]
    tasks = {t["task"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert tasks["derain"]["kind"] == "diffusion"
    assert tasks["derain"]["config"]["layer_norm_type"] == "WithBias"
    assert tasks["denoise"]["config"]["layer_norm_type"] == "BiasFree"
    assert tasks["derain"]["parameters"] == 370954
    assert len(tasks["derain"]["sha256"]) == 64 and tasks["derain"]["default_steps"] == 4
    assert client.get("/docs").status_code == 200
    assert "/restore" in client.get("/openapi.json").json()["paths"]


def test_restore_returns_same_size_png_with_headers(client: TestClient) -> None:
    code, body, headers = _restore(client, png_bytes(random_image(37, 53)), seed=5)
    assert code == 200, body
    out = Image.open(io.BytesIO(body))
    assert out.format == "PNG" and out.size == (53, 37) and out.mode == "RGB"
    assert headers["x-seed"] == "5" and headers["x-request-id"]
    timing = headers["server-timing"]
    for part in ("decode;dur=", "queue;dur=", "compute;dur=", "encode;dur="):
        assert part in timing


def test_seed_is_random_when_absent_and_echoed(client: TestClient) -> None:
    data = png_bytes(random_image(16, 16))
    r = client.post("/restore", params={"task": "derain", "steps": 1}, content=data,
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    seed = int(r.headers["x-seed"])
    again = _restore(client, data, seed=seed, steps=1)[1]
    assert again == r.content


def test_multipart_upload_and_formats(client: TestClient) -> None:
    data = png_bytes(random_image(24, 24))
    r = client.post("/restore", params={"task": "denoise", "steps": 1, "format": "jpeg"},
                    files={"file": ("x.png", data, "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (24, 24)
    r = client.post("/restore", params={"task": "denoise", "steps": 1, "format": "webp"},
                    content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"


def test_modes_are_preserved(client: TestClient) -> None:
    rgba = random_image(20, 30, channels=4)
    code, body, _ = _restore(client, png_bytes(rgba))
    out = np.asarray(Image.open(io.BytesIO(body)))
    assert code == 200 and out.shape == (20, 30, 4)
    assert np.array_equal(out[..., 3], rgba[..., 3])
    gray = random_image(20, 30, channels=1)
    code, body, _ = _restore(client, png_bytes(gray))
    assert code == 200 and Image.open(io.BytesIO(body)).mode == "L"
    g16 = np.random.default_rng(0).integers(0, 65536, (16, 12), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(g16.astype(np.int32), mode="I").convert("I;16").save(buf, format="PNG")
    code, body, _ = _restore(client, buf.getvalue())
    assert code == 200 and Image.open(io.BytesIO(body)).mode.startswith("I;16")


def test_tiled_request_reports_tiles(client: TestClient) -> None:
    code, _, headers = _restore(client, png_bytes(random_image(70, 90)))
    assert code == 200 and int(headers["x-tiles"]) > 1
    code, _, headers = _restore(client, png_bytes(random_image(70, 90)), tile=64)
    assert code == 200 and int(headers["x-tiles"]) >= 1


def _batches(client: TestClient) -> tuple[float, float]:
    """(batches run, batches of exactly one tile) for derain, from the live histogram."""
    lines = client.get("/metrics").text.splitlines()

    def value(prefix: str) -> float:
        return next((float(x.split()[-1]) for x in lines if x.startswith(prefix)), 0.0)

    return (value('diffmamba_batch_size_count{task="derain"}'),
            value('diffmamba_batch_size_bucket{le="1.0",task="derain"}'))


def test_concurrent_requests_equal_their_solo_runs(client: TestClient) -> None:
    """16 requests of different sizes and seeds share batches; each equals its solo run."""
    cases = [(16 + 8 * (i % 4), 16 + 5 * (i % 3), 100 + i) for i in range(16)]
    jobs = [(png_bytes(random_image(h, w, seed=s)), s) for h, w, s in cases]
    start = _batches(client)[0]
    solo = [_restore(client, img, seed=s, steps=2)[1] for img, s in jobs]
    mid = _batches(client)[0]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda j: _restore(client, j[0], seed=j[1], steps=2)[1], jobs))
    end = _batches(client)[0]
    # Same tiles and steps both times (solo: one pass per request and step); fewer passes
    # means tiles of different requests (same tile shape) shared them.
    assert end - mid < mid - start, (mid - start, end - mid)
    for a, b in zip(solo, together, strict=True):
        x = np.asarray(Image.open(io.BytesIO(a)), dtype=int)
        y = np.asarray(Image.open(io.BytesIO(b)), dtype=int)
        assert x.shape == y.shape
        assert np.abs(x - y).max() <= 1  # identical but for rare rounding at the 8-bit step
        assert (x != y).mean() < 0.01


METRICS = [
    "diffmamba_requests_total", "diffmamba_request_duration_seconds_bucket",
    "diffmamba_queue_wait_seconds_bucket", "diffmamba_batch_size_bucket",
    "diffmamba_network_pass_seconds_bucket", "diffmamba_tiles_per_request_bucket",
    "diffmamba_queue_depth", "diffmamba_requests_in_flight",
    "diffmamba_process_resident_memory_bytes", "diffmamba_model_load_seconds",
    "diffmamba_cpu_threads", "diffmamba_event_loop_lag_seconds_count",
    "diffmamba_model_info", "diffmamba_ready",
]


def test_metrics_after_a_request(client: TestClient) -> None:
    assert _restore(client, png_bytes(random_image(16, 16)))[0] == 200
    text = client.get("/metrics").text
    for name in METRICS:
        assert f"\n{name}" in text, name
    assert 'diffmamba_requests_total{status="200",task="derain"}' in text
    assert 'diffmamba_model_info{arch="diffmamba"' in text


def test_readyz_is_503_until_models_are_warm(tmp_path: Path) -> None:
    models = make_models_dir(tmp_path)
    with started_client(models, **SETTINGS) as c:
        first = c.get("/readyz")
        # Loading runs in the background: either still loading (503) or already done.
        assert first.status_code in (200, 503)
        if first.status_code == 503:
            assert first.json()["error"] == "not_ready"
            r = c.post("/restore", params={"task": "derain"}, content=b"x",
                       headers={"Content-Type": "image/png"})
            assert r.status_code == 503 and "retry-after" in r.headers
        wait_ready(c)
    with started_client(tmp_path / "empty", **SETTINGS) as c:
        assert c.get("/readyz").status_code == 503
