"""Admission by memory and windowed tiles: any image within max_pixels is served, whatever
max_queue_size; requests reserve their estimated peak before decoding, wait when memory is
busy and get 413 only when they could never fit."""

from __future__ import annotations

import asyncio
import io
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serving import make_models_dir, png_bytes, random_image, started_client, wait_ready

from service.batching import DynamicBatcher, LazyInput, QueueFullError
from service.imaging import decode_image, encode_image, scaled_like
from service.restoration import TilingPolicy, open_session, run_session
from service.runtime import pipeline
from service.runtime.admission import AdmissionTimeout, MemoryAdmission, TooLargeForMemory
from service.runtime.memory import (
    MB,
    current_rss,
    estimate_request,
    peak_rss,
    release_memory,
    reset_peak_rss,
)

PNG = {"Content-Type": "image/png"}
SETTINGS = {"tile_size": 16, "tile_overlap": 8, "max_queue_size": 4, "max_batch": 2,
            "max_queue_delay_ms": 1.0}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with started_client(make_models_dir(tmp_path_factory.mktemp("adm")), **SETTINGS) as c:
        wait_ready(c)
        yield c


def _library_restore(client: TestClient, data: bytes, steps: int, seed: int) -> np.ndarray:
    """The same image through the synchronous driver, as 8-bit RGB."""
    task = client.app.state.service.tasks["derain"]
    image = decode_image(data)
    cond = torch.from_numpy(np.ascontiguousarray(image.rgb.transpose(2, 0, 1)))[None]
    session = open_session(task.kind, cond, TilingPolicy(tile=16, overlap=8), steps=steps,
                           seed=seed)
    out = run_session(session, task.run_batch, max_batch=2)
    encoded, _ = encode_image(out[0].permute(1, 2, 0).numpy(), scaled_like(image, 1), "png")
    return np.asarray(Image.open(io.BytesIO(encoded)), dtype=int)


def test_more_tiles_than_the_queue_holds_are_served_and_equal_the_library(
    client: TestClient,
) -> None:
    data = png_bytes(random_image(56, 64, seed=3))  # 6 × 7 = 42 tiles of 16, queue of 4
    r = client.post("/restore", params={"task": "derain", "steps": 2, "seed": 7}, content=data,
                    headers=PNG)
    assert r.status_code == 200, r.text
    assert int(r.headers["x-tiles"]) == 42
    served = np.asarray(Image.open(io.BytesIO(r.content)), dtype=int)
    expected = _library_restore(client, data, steps=2, seed=7)
    assert served.shape == expected.shape == (56, 64, 3)
    assert np.abs(served - expected).max() <= 1
    assert (served != expected).mean() < 0.01
    stats = client.app.state.service.tasks["derain"].batcher.stats()
    assert stats["rejected"] == 0 and stats["streams"] == 0 and stats["pending"] == 0


def test_concurrent_large_requests_share_the_small_queue(client: TestClient) -> None:
    jobs = [png_bytes(random_image(40, 48, seed=s)) for s in range(3)]
    solo = [client.post("/restore", params={"task": "derain", "steps": 1, "seed": 1},
                        content=d, headers=PNG).content for d in jobs]
    results: list[bytes] = [b""] * 3

    def post(i: int) -> None:
        r = client.post("/restore", params={"task": "derain", "steps": 1, "seed": 1},
                        content=jobs[i], headers=PNG)
        assert r.status_code == 200, r.text
        results[i] = r.content

    threads = [threading.Thread(target=post, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for a, b in zip(solo, results, strict=True):
        x = np.asarray(Image.open(io.BytesIO(a)), dtype=int)
        y = np.asarray(Image.open(io.BytesIO(b)), dtype=int)
        assert np.abs(x - y).max() <= 1


def _png_header_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_never_fitting_image_is_413_before_decoding(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with started_client(make_models_dir(tmp_path), **SETTINGS, max_pixels=10**8) as c:
        wait_ready(c)
        state = c.app.state.service
        state.admission = MemoryAdmission(budget=300 * MB, baseline=0)
        calls: list[int] = []
        real = pipeline.decode_image

        def counting(*args: object, **kwargs: object) -> object:
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(pipeline, "decode_image", counting)
        r = c.post("/restore", params={"task": "derain", "steps": 1},
                   content=_png_header_claiming(6000, 5000), headers=PNG)
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "too_large_for_memory"
        assert "MB" in r.json()["detail"]
        assert calls == []  # refused from the header alone
        ok = c.post("/restore", params={"task": "derain", "steps": 1},
                    content=png_bytes(random_image(24, 24)), headers=PNG)
        assert ok.status_code == 200 and calls == [1]
        assert state.admission.reserved == 0 and state.admission.refused == 1


def test_admission_waits_for_memory_then_proceeds() -> None:
    async def scenario() -> None:
        admission = MemoryAdmission(budget=100, baseline=10)  # 90 bytes for requests
        order: list[str] = []
        async with admission.reserve(60) as waited:
            assert waited < 0.1

            async def second() -> None:
                async with admission.reserve(50) as w:
                    order.append(f"second after {w:.2f}")

            task = asyncio.create_task(second())
            await asyncio.sleep(0.05)
            assert admission.waiting == 1 and not order  # 60 + 50 > 90: it waits
            order.append("first done")
        await asyncio.wait_for(task, 1)
        assert order[0] == "first done" and order[1].startswith("second after 0.0")
        assert admission.reserved == 0
        with pytest.raises(TooLargeForMemory):
            async with admission.reserve(91):
                pass
        async with admission.reserve(90):  # exactly fits
            with pytest.raises(AdmissionTimeout):
                async with admission.reserve(1, deadline=asyncio.get_running_loop().time()
                                             * 0 + __import__("time").monotonic() + 0.05):
                    pass
            assert admission.waiting == 0
        assert admission.reserved == 0 and admission.timed_out == 1

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_cancelled_waiter_leaves_the_line() -> None:
    async def scenario() -> None:
        admission = MemoryAdmission(budget=10)
        async with admission.reserve(10):
            waiter = asyncio.create_task(admission.reserve(5).__aenter__())
            await asyncio.sleep(0.01)
            assert admission.waiting == 1
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert admission.waiting == 0
        assert admission.reserved == 0

    asyncio.run(asyncio.wait_for(scenario(), 5))


# ---------------------------------------------------------------------- the batcher's streams


def test_stream_windows_bound_the_queue_and_are_fair() -> None:
    gate = threading.Event()
    seen: list[float] = []

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gate.wait(3)
        seen.extend(float(v) for v in x[:, 0, 0, 0])
        return x[:, :3] * 2

    def lazy(owner: int, i: int) -> LazyInput:
        return LazyInput((3, 4, 4), lambda: torch.full((3, 4, 4), owner * 100.0 + i))

    async def scenario() -> None:
        async with DynamicBatcher(net, max_batch_size=2, max_queue_delay_ms=1,
                                  max_queue_size=4) as b:
            with b.open_stream() as s1, b.open_stream() as s2:
                big = asyncio.create_task(s1.submit_many([lazy(1, i) for i in range(20)],
                                                         [0.0] * 20))
                await asyncio.sleep(0.02)
                small = asyncio.create_task(s2.submit_many([lazy(2, i) for i in range(2)],
                                                           [0.0] * 2))
                await asyncio.sleep(0.02)
                assert b.queue_depth <= 4 and s1.queued + s2.queued == b.queue_depth
                assert s2.pending + s2.queued == 2  # it waits for its share, not for all 20
                gate.set()
                outs = await big
                assert [float(o[0, 0, 0]) for o in outs] == [200.0 + 2 * i for i in range(20)]
                await small
                with b.open_stream(), b.open_stream(), pytest.raises(QueueFullError):
                    b.open_stream()  # a fifth stream: every one of the 4 slots is held
                # A cancelled stream's waiting tiles leave; nothing of it runs afterwards.
                gate.clear()
                with b.open_stream() as s3:
                    doomed = asyncio.create_task(s3.submit_many(
                        [lazy(3, i) for i in range(12)], [0.0] * 12))
                    await asyncio.sleep(0.02)
                    doomed.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await doomed
                    assert s3.pending == 0 and b.queue_depth == 0
                gate.set()
                await asyncio.sleep(0.05)
            assert b.stats()["streams"] == 0
        small_at = seen.index(200.0)
        assert small_at < 8, seen  # the small request ran within the big one's first windows
        assert sum(1 for v in seen if v >= 300) <= 2  # at most the batch already running

    asyncio.run(asyncio.wait_for(scenario(), 10))


# ---------------------------------------------------------------------- estimates


def _measured_peak(height: int, width: int, tile: int) -> tuple[int, int]:
    """(estimate, measured peak over the RSS before) of the path's steps for one image."""
    from service.models.kinds import DIFFUSION

    class Eps(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x[:, 3:] * 0.5

    data = png_bytes(random_image(height, width, seed=1))
    estimate = estimate_request(DIFFUSION, height, width, tile=tile, overlap=16,
                                body_bytes=len(data))
    release_memory()
    assert reset_peak_rss()
    before = current_rss()
    image = decode_image(data)
    upload = pipeline.compact(image)
    del image
    session = open_session(DIFFUSION, upload.pixels, TilingPolicy(tile=tile, overlap=16),
                           steps=1, seed=0)
    model = Eps()
    with torch.inference_mode():  # streamed tile by tile, as the batcher drives it
        for i in range(session.num_tiles):
            x = session.tile_input(i)[None]
            session.accept(i, model(x, torch.zeros(1))[0])
        session.finish_round()
        out = session.result()
    rgb = pipeline.to_hwc(out)
    del out, session
    encode_image(rgb, upload.like, "png")
    return estimate.peak, peak_rss() - before


@pytest.mark.parametrize("size", [(1024, 768), (1536, 1536)])
def test_estimate_bounds_the_measured_peak(size: tuple[int, int]) -> None:
    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs to measure a peak")
    estimate, measured = _measured_peak(*size, tile=256)
    assert measured > 0
    assert estimate >= measured, (estimate / MB, measured / MB)
    assert estimate < 4 * measured + 32 * MB  # loose: an estimate, not a wild guess
