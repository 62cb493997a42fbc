"""Bad input always gets a clear 4xx JSON error; overload and timeouts get 503/504."""

from __future__ import annotations

import io
import logging
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serving import make_models_dir, png_bytes, random_image, started_client, wait_ready

SETTINGS = {"tile_size": 32, "tile_overlap": 8, "max_upload_bytes": 200_000,
            "max_pixels": 1_000_000}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with started_client(make_models_dir(tmp_path_factory.mktemp("err")), **SETTINGS) as c:
        wait_ready(c)
        yield c


def _png_header_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_image(8, 8)).save(buf, format="GIF")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_image(32, 32)).save(buf, format="JPEG")
    return buf.getvalue()


GOOD = png_bytes(random_image(16, 16))
PNG = {"Content-Type": "image/png"}
# (name, query, body, headers, expected status, expected error code)
CASES = [
    ("empty body", {"task": "derain"}, b"", PNG, 400, "empty_body"),
    ("garbage", {"task": "derain"}, b"\x00garbage" * 50, PNG, 400, "invalid_image"),
    ("truncated png", {"task": "derain"}, GOOD[: len(GOOD) // 2], PNG, 400, "invalid_image"),
    ("truncated jpeg", {"task": "derain"}, _jpeg()[:300], {"Content-Type": "image/jpeg"},
     400, "invalid_image"),
    ("text body", {"task": "derain"}, b"hello world", {"Content-Type": "text/plain"},
     415, "unsupported_media_type"),
    ("json body", {"task": "derain"}, b"{}", {"Content-Type": "application/json"},
     415, "unsupported_media_type"),
    ("gif", {"task": "derain"}, _gif(), {"Content-Type": "image/gif"}, 415, "unsupported_image"),
    ("unknown task", {"task": "dehaze"}, GOOD, PNG, 404, "unknown_task"),
    ("missing task", {}, GOOD, PNG, 422, "invalid_parameter"),
    ("steps zero", {"task": "derain", "steps": 0}, GOOD, PNG, 422, "invalid_parameter"),
    ("steps too many", {"task": "derain", "steps": 51}, GOOD, PNG, 422, "invalid_parameter"),
    ("steps not int", {"task": "derain", "steps": "four"}, GOOD, PNG, 422, "invalid_parameter"),
    ("negative seed", {"task": "derain", "seed": -1}, GOOD, PNG, 422, "invalid_parameter"),
    ("bad format", {"task": "derain", "format": "bmp"}, GOOD, PNG, 422, "invalid_parameter"),
    ("tile not multiple of 8", {"task": "derain", "tile": 100}, GOOD, PNG, 422,
     "invalid_parameter"),
    ("tile below overlap", {"task": "derain", "tile": 8}, GOOD, PNG, 422, "invalid_parameter"),
    ("upload too large", {"task": "derain"}, b"\x89PNG" + b"\0" * 300_000, PNG, 413,
     "payload_too_large"),
    ("decompression bomb", {"task": "derain"}, _png_header_claiming(30000, 30000), PNG, 413,
     "image_too_large"),
    ("too many pixels", {"task": "derain"}, _png_header_claiming(1200, 1000), PNG, 413,
     "image_too_large"),
]


@pytest.mark.parametrize(("name", "query", "body", "headers", "status", "code"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_corpus(client: TestClient, name: str, query: dict, body: bytes,
                          headers: dict, status: int, code: str) -> None:
    r = client.post("/restore", params=query, content=body, headers=headers)
    assert r.status_code == status, r.text
    payload = r.json()
    assert payload["error"] == code
    assert isinstance(payload["detail"], str) and payload["detail"]


def test_unknown_task_lists_tasks(client: TestClient) -> None:
    r = client.post("/restore", params={"task": "dehaze"}, content=GOOD, headers=PNG)
    assert "derain" in r.json()["detail"] and "denoise" in r.json()["detail"]


def test_multipart_without_file_field(client: TestClient) -> None:
    r = client.post("/restore", params={"task": "derain"}, files={"image": ("x.png", GOOD)})
    assert r.status_code == 400 and r.json()["error"] == "missing_file"


def test_wrong_method_and_path(client: TestClient) -> None:
    assert client.get("/restore").status_code == 405
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_network_failure_is_500_logged_not_shown_and_service_recovers(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    task = client.app.state.service.tasks["derain"]
    model = task.loaded.model

    def broken(*_: object) -> None:
        raise RuntimeError("simulated CUDA error at /opt/secret/path")

    model.forward = broken
    try:
        with caplog.at_level(logging.ERROR, logger="service"):
            r = client.post("/restore", params={"task": "derain", "steps": 1}, content=GOOD,
                            headers={**PNG, "X-Request-ID": "fail-42"})
    finally:
        del model.forward
    assert r.status_code == 500
    assert r.json()["error"] == "inference_failed"
    assert "simulated" not in r.text and "/opt/secret" not in r.text  # server text stays inside
    assert "fail-42" in r.json()["detail"]
    logged = [rec for rec in caplog.records if "fail-42" in rec.getMessage()]
    assert logged and "simulated CUDA error" in logged[0].getMessage()
    ok = client.post("/restore", params={"task": "derain", "steps": 1}, content=GOOD, headers=PNG)
    assert ok.status_code == 200


def test_unhandled_exception_is_json_500_with_request_id(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    app = client.app

    async def boom() -> None:
        raise KeyError("internal table /var/lib/x")

    app.add_api_route("/test-boom", boom)
    with caplog.at_level(logging.ERROR, logger="service"):
        r = client.get("/test-boom", headers={"X-Request-ID": "boom-1"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "internal_error" and "boom-1" in r.json()["detail"]
    assert "/var/lib" not in r.text and "KeyError" not in r.text
    (record,) = [rec for rec in caplog.records if "boom-1" in rec.getMessage()]
    assert record.exc_info is not None and "/var/lib/x" in str(record.exc_info[1])


def _with_bad_crc(png: bytes, chunk: bytes) -> bytes:
    at = png.index(chunk) - 4
    length = int.from_bytes(png[at:at + 4], "big")
    crc_at = at + 8 + length
    return png[:crc_at] + bytes([png[crc_at] ^ 0xFF]) + png[crc_at + 1:]


def test_corrupt_png_crc_is_invalid_image(client: TestClient) -> None:
    r = client.post("/restore", params={"task": "derain"}, content=_with_bad_crc(GOOD, b"IDAT"),
                    headers=PNG)
    assert r.status_code == 400 and r.json()["error"] == "invalid_image"
    assert "CRC" in r.json()["detail"] and "IDAT" in r.json()["detail"]
    # Pillow alone accepts it: the pixel data's CRC is not its concern.
    Image.open(io.BytesIO(_with_bad_crc(GOOD, b"IDAT"))).load()


def test_truncated_multipart_is_invalid_multipart(client: TestClient) -> None:
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + GOOD
    complete = body + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    ok = client.post("/restore", params={"task": "derain", "steps": 1}, content=complete,
                     headers=headers)
    assert ok.status_code == 200, ok.text
    for cut in (body, body[:-20], complete[:-4]):
        r = client.post("/restore", params={"task": "derain"}, content=cut, headers=headers)
        assert r.status_code == 400 and r.json()["error"] == "invalid_multipart", r.text
        assert "truncated" in r.json()["detail"]


def test_two_file_parts_are_refused(client: TestClient) -> None:
    other = png_bytes(random_image(16, 16, seed=1))
    r = client.post("/restore", params={"task": "derain"},
                    files=[("file", ("a.png", GOOD, "image/png")),
                           ("file", ("b.png", other, "image/png"))])
    assert r.status_code == 400 and r.json()["error"] == "multiple_files"
    assert "2 parts named 'file'" in r.json()["detail"]


def _metric(client: TestClient, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith(prefix))


def test_impossible_output_format_is_refused_before_compute(client: TestClient) -> None:
    wide = png_bytes(np.zeros((8, 16384, 3), np.uint8))  # WebP: at most 16383 px per side
    passes = _metric(client, 'diffmamba_batch_size_count{task="derain"}')
    r = client.post("/restore", params={"task": "derain", "steps": 1, "format": "webp"},
                    content=wide, headers=PNG)
    assert r.status_code == 422 and r.json()["error"] == "unsupported_format", r.text
    detail = r.json()["detail"]
    assert "16384x8" in detail and "16383" in detail
    assert "png" in detail and "jpeg" in detail and "tiff" not in detail  # only what the API takes
    assert _metric(client, 'diffmamba_batch_size_count{task="derain"}') == passes  # no compute


def test_load_failure_is_not_exposed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "derain.pth").write_bytes(b"not a checkpoint at all")
    with caplog.at_level(logging.ERROR, logger="service"), started_client(models) as c:
        deadline = time.monotonic() + 60
        while not c.app.state.service.load_error:
            assert time.monotonic() < deadline, "the load never failed"
            time.sleep(0.05)
        ready = c.get("/readyz")
        restore = c.post("/restore", params={"task": "derain"}, content=GOOD, headers=PNG)
    for r in (ready, restore):
        assert r.status_code == 503 and r.json()["error"] == "not_ready"
        assert "derain.pth" not in r.text and str(tmp_path) not in r.text
        assert r.json()["detail"] == "model loading failed (see the server log)"
    assert any("derain.pth" in rec.getMessage() for rec in caplog.records)


def test_queue_full_is_503_with_retry_after(tmp_path: Path) -> None:
    """Every request in flight holds at least one queue slot: with one slot, a second request
    while the first runs is refused at once; the first, 25 tiles through a 1-tile queue, is
    served."""
    import threading
    import time

    with started_client(make_models_dir(tmp_path), tile_size=16, tile_overlap=8,
                        max_queue_size=1) as c:
        wait_ready(c)
        batcher = c.app.state.service.tasks["derain"].batcher
        big = png_bytes(random_image(48, 48))  # 25 tiles of 16: more than the queue holds
        first: list[int] = []
        worker = threading.Thread(target=lambda: first.append(c.post(
            "/restore", params={"task": "derain", "steps": 20}, content=big,
            headers=PNG).status_code))
        worker.start()
        deadline = time.monotonic() + 60
        while batcher.stats()["streams"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        r = c.post("/restore", params={"task": "derain", "steps": 1}, content=GOOD, headers=PNG)
        worker.join(120)
        assert r.status_code == 503
        assert r.json()["error"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
        assert first == [200]


def test_deadline_is_504(tmp_path: Path) -> None:
    with started_client(make_models_dir(tmp_path), request_timeout_s=1e-6) as c:
        wait_ready(c)
        r = c.post("/restore", params={"task": "derain", "steps": 1}, content=GOOD, headers=PNG)
        assert r.status_code == 504 and r.json()["error"] == "timeout"
        text = c.get("/metrics").text
        assert 'diffmamba_requests_total{status="504",task="derain"} 1.0' in text


def test_exif_orientation_is_applied(client: TestClient) -> None:
    img = Image.fromarray(np.zeros((16, 32, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    r = client.post("/restore", params={"task": "derain", "steps": 1}, content=buf.getvalue(),
                    headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200
    assert Image.open(io.BytesIO(r.content)).size == (16, 32)
