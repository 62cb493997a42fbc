"""Task ``sr``: VmambaIR's ×4 nets through the one restoration path (library, HTTP, CLI, engines).

The fixture checkpoints are tiny configs with perturbed weights (tests/fixtures/vmambair_sr and
vmambair_sisr); their 21×13 input and the release's 84×52 output pin the numbers.
"""

from __future__ import annotations

import io
import math
import shutil
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from serving import FIXTURES, png_bytes, random_image, started_client, wait_ready

from service.diffusion import restore
from service.imaging import upscale_alpha
from service.models import load_checkpoint, load_model
from service.models.kinds import SUPER_RESOLUTION
from service.restoration import TilingPolicy, open_session, restore_image, run_session
from service.restoration.driver import model_pass

SR_CKPT = FIXTURES / "vmambair_sr" / "tiny_checkpoint.pth"
SISR_CKPT = FIXTURES / "vmambair_sisr" / "tiny_checkpoint.pth"
WHOLE_MAX = 24 * 24
SETTINGS = {"tile_size": 16, "tile_overlap": 8, "max_queue_delay_ms": 50.0, "max_batch": 16,
            "whole_image_max_pixels": WHOLE_MAX, "max_pixels": 128 * 128}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sr_model() -> torch.nn.Module:
    return load_model(SR_CKPT)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """sr: MambaRealSR11 (×4); denoise: Diff-Mamba, side by side."""
    models = tmp_path_factory.mktemp("sr") / "models"
    models.mkdir()
    shutil.copy(SR_CKPT, models / "sr.pth")
    shutil.copy(FIXTURES / "diffmamba" / "tiny_biasfree_checkpoint.pth", models / "denoise.pth")
    with started_client(models, **SETTINGS) as c:
        wait_ready(c)
        yield c


def _post(client: TestClient, data: bytes, **params: object) -> tuple[int, bytes, dict]:
    r = client.post("/restore", params={"task": "sr", **params}, content=data,
                    headers={"Content-Type": "image/png"})
    return r.status_code, r.content, dict(r.headers)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=int)


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image[..., :3]).permute(2, 0, 1)[None].float() / 255


def _whole(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The bare network on the whole image, clamped and rounded to 8 bits."""
    with torch.no_grad():
        out = model(_as_tensor(image)).clamp(0, 1)
    return np.rint(out[0].permute(1, 2, 0).numpy() * 255).astype(int)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


# ---------------------------------------------------------------- the library path
@pytest.mark.parametrize("folder", ["vmambair_sr", "vmambair_sisr"])
def test_restore_path_matches_release_for_odd_and_padded_sizes(folder: str) -> None:
    """``service.diffusion.restore`` and the session reflect-pad, run, crop to 4h × 4w."""
    expected = torch.load(FIXTURES / folder / "tiny_expected.pt", weights_only=True)
    model = load_model(FIXTURES / folder / "tiny_checkpoint.pth")
    for x, want in ((expected["input"], expected["output"]),  # 21×13: padded inside
                    (expected["padded_input"], expected["padded_output"])):
        got = restore(model, x, steps=7, seed=3)  # steps and seed do not apply
        assert got.shape == want.shape
        assert (got - want.clamp(0, 1)).abs().max().item() < 1e-4
        session = open_session(SUPER_RESOLUTION, x, TilingPolicy())
        via_session = run_session(session, model_pass(model, SUPER_RESOLUTION))
        assert session.num_tiles == 1
        assert (via_session - want.clamp(0, 1)).abs().max().item() < 1e-4


def test_library_restore_serves_all_four_architectures() -> None:
    x = torch.rand(1, 3, 20, 12, generator=torch.Generator().manual_seed(0))
    checkpoints = {
        "diffmamba": FIXTURES / "diffmamba" / "tiny_withbias_checkpoint.pth",
        "vmambair": FIXTURES / "vmambair" / "tiny_checkpoint.pth",
        "mambarealsr11": SR_CKPT,
        "mambasisr6": SISR_CKPT,
    }
    for arch, path in checkpoints.items():
        loaded = load_checkpoint(path)
        assert loaded.arch == arch
        with torch.no_grad():
            out = restore(loaded.model, x, steps=2, seed=1)
            again = restore(loaded.model, x, steps=2, seed=1)
        scale = loaded.kind.scale
        assert out.shape == (1, 3, 20 * scale, 12 * scale), arch
        assert torch.equal(out, again) and out.min() >= 0 and out.max() <= 1


class _BicubicX4(torch.nn.Module):
    """A local ×4 'network': tiled output may differ from whole only where tiles are cut."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=4, mode="bicubic").clamp(0, 1)


def test_tiled_sr_is_close_to_whole(sr_model: torch.nn.Module) -> None:
    """Above the budget the image runs in input tiles blended on a ×4 canvas (overlap ×4).

    Measured on a 40×36 random image: with a local ×4 operator (bicubic) tiles of 16 / overlap 8
    give 66.1 dB to the whole-image output (max |Δ| 0.0045): the scale-aware blending loses
    nothing. With the fixture net (perturbed random weights whose OSS blocks pool the whole
    feature map) tiles of 32 / overlap 8 give 16.6 dB and tiles of 16 give 10.8 dB: a tile's
    pooled statistics differ from the image's, as for VmambaIR deraining (its fixture: 11.2 dB
    at 16 / 8; its trained default: 46 dB, README). That is why whole images run up to the budget.
    """
    x = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    whole_policy = TilingPolicy(whole_max_pixels=10**6)
    for model, tile, floor in ((_BicubicX4(), 16, 60.0), (sr_model, 32, 15.0)):
        whole, _ = restore_image(model, SUPER_RESOLUTION, x, whole_policy)
        tiled, session = restore_image(
            model, SUPER_RESOLUTION, x, TilingPolicy(tile=tile, overlap=8, whole_max_pixels=100))
        assert session.num_tiles > 1
        assert tiled.shape == whole.shape == (1, 3, 160, 144)
        assert _psnr(tiled, whole) > floor


def test_batched_tiles_equal_solo_tiles(sr_model: torch.nn.Module) -> None:
    x = torch.rand(1, 3, 40, 32, generator=torch.Generator().manual_seed(7))
    policy = TilingPolicy(tile=16, overlap=8, whole_max_pixels=1)
    batched, session = restore_image(sr_model, SUPER_RESOLUTION, x, policy, max_batch=16)
    solo, _ = restore_image(sr_model, SUPER_RESOLUTION, x, policy, max_batch=1)
    assert session.num_tiles > 4
    assert (batched - solo).abs().max().item() <= 1e-4


# ---------------------------------------------------------------- HTTP
def test_tasks_show_the_scale(client: TestClient) -> None:
    tasks = {t["task"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert (tasks["sr"]["kind"], tasks["sr"]["scale"]) == ("super_resolution", 4)
    assert tasks["sr"]["steps_ignored"] is True
    assert (tasks["denoise"]["kind"], tasks["denoise"]["scale"]) == ("diffusion", 1)


def test_sr_returns_the_whole_image_network_output(client: TestClient,
                                                   sr_model: torch.nn.Module) -> None:
    image = random_image(21, 13, seed=1)  # odd sides: padded to 24×16, cropped to 84×52
    code, data, headers = _post(client, png_bytes(image), steps=5, seed=2)
    assert code == 200 and headers["x-tiles"] == "1"
    assert "x-steps" not in headers and "x-seed" not in headers
    got = _pixels(data)
    assert got.shape == (84, 52, 3)
    assert np.abs(got - _whole(sr_model, image)).max() <= 1
    tiny = random_image(1, 3, seed=2)  # smaller than the pad multiple: replicate-padded
    code, data, _ = _post(client, png_bytes(tiny))
    assert code == 200 and _pixels(data).shape == (4, 12, 3)


def test_sr_above_the_budget_is_tiled(client: TestClient, sr_model: torch.nn.Module) -> None:
    image = random_image(24, 40, seed=3)  # 960 input px > the 576 px budget
    code, data, headers = _post(client, png_bytes(image))
    assert code == 200 and int(headers["x-tiles"]) > 1
    expected, _ = restore_image(sr_model, SUPER_RESOLUTION, _as_tensor(image),
                                TilingPolicy(tile=16, overlap=8, whole_max_pixels=WHOLE_MAX))
    want = np.rint(expected[0].permute(1, 2, 0).numpy() * 255).astype(int)
    got = _pixels(data)
    assert got.shape == (96, 160, 3)
    assert np.abs(got - want).max() <= 1


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds garbage where the pixels should be."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"not zlib")


def test_output_over_max_pixels_is_refused_before_decoding(client: TestClient) -> None:
    """40×40 = 1600 input px is under max_pixels (16384), its 160×160 output is not: 413 from
    the header, before the (corrupt) pixels are touched — decoding them would answer 400."""
    r = client.post("/restore", params={"task": "sr"}, content=_png_header_only(40, 40),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 413
    body = r.json()
    assert body["error"] == "image_too_large" and "160x160" in body["detail"]
    # the same image is fine for a task at scale 1
    ok = client.post("/restore", params={"task": "denoise", "steps": 1},
                     content=png_bytes(random_image(40, 40)), headers={"Content-Type": "image/png"})
    assert ok.status_code == 200


def test_alpha_is_upscaled(client: TestClient) -> None:
    rgba = random_image(12, 16, seed=4, channels=4)
    rgba[..., 3] = np.linspace(0, 255, 16, dtype=np.uint8)[None, :]
    code, data, _ = _post(client, png_bytes(rgba))
    assert code == 200
    out = Image.open(io.BytesIO(data))
    assert out.mode == "RGBA" and out.size == (64, 48)
    alpha = np.asarray(out)[..., 3]
    assert np.array_equal(alpha, upscale_alpha(rgba[..., 3], 4))
    assert alpha[:, 0].max() < 40 and alpha[:, -1].min() > 215


def test_grayscale_16_bit_stays_16_bit(client: TestClient) -> None:
    gray = (random_image(10, 14, seed=5, channels=1).astype(np.uint16) * 257)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG")
    code, data, _ = _post(client, buf.getvalue())
    assert code == 200
    out = Image.open(io.BytesIO(data))
    assert out.mode in ("I;16", "I") and out.size == (56, 40)


def _batches(client: TestClient) -> float:
    lines = client.get("/metrics").text.splitlines()
    prefix = 'diffmamba_batch_size_count{task="sr"}'
    return next((float(x.split()[-1]) for x in lines if x.startswith(prefix)), 0.0)


def test_concurrent_requests_equal_their_solo_runs(client: TestClient) -> None:
    """Whole images and tiles of several requests share passes; each equals its solo run."""
    sizes = [(16, 16), (16, 16), (24, 40), (16, 16), (24, 40), (16, 16)]
    images = [png_bytes(random_image(h, w, seed=20 + i)) for i, (h, w) in enumerate(sizes)]
    start = _batches(client)
    solo = [_post(client, img)[1] for img in images]
    mid = _batches(client)
    with ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(lambda img: _post(client, img)[1], images))
    end = _batches(client)
    assert end - mid < mid - start, (mid - start, end - mid)  # same-shape inputs shared passes
    for a, b in zip(solo, together, strict=True):
        assert np.abs(_pixels(a) - _pixels(b)).max() <= 1


# ---------------------------------------------------------------- engines
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_runtime_matches_torch_for_sr(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from service.engines import TorchEngine
    from service.engines.onnx_export import export_onnx
    from service.engines.ort_engine import OnnxRuntimeEngine

    loaded = load_checkpoint(SR_CKPT)
    path = export_onnx(loaded.model, loaded.kind, 16, tmp_path / "sr.onnx",
                       metadata={"arch": loaded.arch})
    eager = TorchEngine(loaded.model, loaded.kind, torch.device("cpu"))
    engine = OnnxRuntimeEngine(path, loaded.kind, 16, 4, eager, threads=1)
    for batch in (1, 3):
        x = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        got, want = engine.run(x, None), eager.run(x, None)
        assert got.shape == want.shape == (batch, 3, 64, 64)
        assert float((got - want).abs().max()) < 1e-3
    assert engine.stats["fallback_batches"] == 0


# ---------------------------------------------------------------- CLI
def test_cli_restores_sr_by_task_and_prints_the_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        sr_model: torch.nn.Module) -> None:
    from service.cli import main

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(SR_CKPT, models / "sr.pth")
    monkeypatch.setenv("DIFFMAMBA_MODELS_DIR", str(models))
    image = random_image(13, 21, seed=6)
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    code = main(["restore", str(tmp_path / "photo.png"), "--task", "sr", "--output", str(out),
                 "--suffix", "", "--device", "cpu", "--precision", "fp32"])
    printed = capsys.readouterr().out
    assert code == 0 and "21x13 -> 84x52" in printed and "1 restored, 0 failed" in printed
    got = _pixels((out / "photo.png").read_bytes())
    assert np.abs(got - _whole(sr_model, image)).max() <= 1

    code = main(["restore", str(tmp_path / "photo.png"), "--task", "nope", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "'nope'" in err and "available: sr" in err


@pytest.mark.slow
def test_compile_engine_matches_eager_for_sr() -> None:
    """Static shapes at batch 1 and 2, outputs 4× the tile (measured max |Δ| 5e-6)."""
    from service.engines import TorchEngine
    from service.engines.compiled import CompiledEngine

    loaded = load_checkpoint(SR_CKPT)
    eager = TorchEngine(loaded.model, loaded.kind, torch.device("cpu"))
    engine = CompiledEngine(eager, 16, 2)
    engine.warm_up()
    for batch in (1, 2):
        x = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        got, want = engine.run(x, None), eager.run(x, None)
        assert got.shape == want.shape == (batch, 3, 64, 64)
        assert float((got - want).abs().max()) < 1e-4
    assert engine.stats["fallback_batches"] == 0
