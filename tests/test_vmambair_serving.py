"""A task backed by a VmambaIR checkpoint: single pass, whole images or tiles, shared batches."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serving import FIXTURES, png_bytes, random_image, started_client, wait_ready

from service.models import load_model
from service.tiling import run_single_pass

CKPT = FIXTURES / "vmambair" / "tiny_checkpoint.pth"
WHOLE_MAX = 48 * 48
SETTINGS = {"tile_size": 32, "tile_overlap": 8, "max_queue_delay_ms": 50.0, "max_batch": 16,
            "whole_image_max_pixels": WHOLE_MAX}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """derain: VmambaIR (single pass); denoise: Diff-Mamba (diffusion), side by side."""
    models = tmp_path_factory.mktemp("vmambair") / "models"
    models.mkdir()
    shutil.copy(CKPT, models / "derain.pth")
    shutil.copy(FIXTURES / "diffmamba" / "tiny_biasfree_checkpoint.pth", models / "denoise.pth")
    with started_client(models, **SETTINGS) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model(CKPT)


def _restore(client: TestClient, data: bytes, **params: object) -> tuple[int, bytes, dict]:
    r = client.post("/restore", params={"task": "derain", **params}, content=data,
                    headers={"Content-Type": "image/png"})
    return r.status_code, r.content, dict(r.headers)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=int)


def _expected(model: torch.nn.Module, image: np.ndarray, tile: int | None) -> np.ndarray:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    out = run_single_pass(model, x, tile=tile, overlap=8)
    return np.rint(out[0].permute(1, 2, 0).numpy() * 255).astype(int)


def _assert_same_8bit(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1  # identical but for rare rounding at the 8-bit step
    assert (a != b).mean() < 0.01


def test_tasks_show_single_pass_and_steps_ignored(client: TestClient) -> None:
    tasks = {t["task"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    derain, denoise = tasks["derain"], tasks["denoise"]
    assert (derain["arch"], derain["kind"]) == ("vmambair", "single_pass")
    assert derain["steps_ignored"] is True and derain["default_steps"] is None
    assert derain["parameters"] == 246_690 and derain["config"]["dim"] == 8
    assert denoise["kind"] == "diffusion" and denoise["steps_ignored"] is False


def test_whole_image_is_one_pass_equal_to_the_model(client: TestClient,
                                                    model: torch.nn.Module) -> None:
    image = random_image(20, 28, seed=1)
    code, data, headers = _restore(client, png_bytes(image))
    assert code == 200 and headers["x-tiles"] == "1"
    assert "x-steps" not in headers and "x-seed" not in headers
    _assert_same_8bit(_pixels(data), _expected(model, image, tile=None))
    # steps and seed do not apply: the same bytes whatever they say
    assert _restore(client, png_bytes(image), steps=7, seed=3)[1] == data


def test_large_image_is_tiled_and_blended(client: TestClient, model: torch.nn.Module) -> None:
    image = random_image(60, 70, seed=2)  # 4200 px > the 2304 px whole-image budget
    code, data, headers = _restore(client, png_bytes(image))
    assert code == 200 and int(headers["x-tiles"]) > 1
    _assert_same_8bit(_pixels(data), _expected(model, image, tile=32))
    # a tile size asked for explicitly tiles even an image under the budget
    code, _, headers = _restore(client, png_bytes(random_image(40, 40)), tile=16)
    assert code == 200 and int(headers["x-tiles"]) > 1


def _batches(client: TestClient) -> float:
    lines = client.get("/metrics").text.splitlines()
    prefix = 'diffmamba_batch_size_count{task="derain"}'
    return next((float(x.split()[-1]) for x in lines if x.startswith(prefix)), 0.0)


def test_concurrent_requests_equal_their_solo_runs(client: TestClient) -> None:
    """Requests of a few sizes (whole and tiled) share passes; each equals its solo run."""
    sizes = [(24, 32), (24, 32), (16, 16), (24, 32), (16, 16), (56, 64), (24, 32), (16, 16)]
    images = [png_bytes(random_image(h, w, seed=10 + i)) for i, (h, w) in enumerate(sizes)]
    start = _batches(client)
    solo = [_restore(client, img)[1] for img in images]
    mid = _batches(client)
    with ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(lambda img: _restore(client, img)[1], images))
    end = _batches(client)
    assert end - mid < mid - start, (mid - start, end - mid)  # same-shape inputs shared passes
    for a, b in zip(solo, together, strict=True):
        _assert_same_8bit(_pixels(a), _pixels(b))


def test_batched_tiles_equal_solo_tiles_in_float(model: torch.nn.Module) -> None:
    """Below the 8-bit step: a batch of tiles gives each tile's solo output to 1e-4."""
    x = torch.rand(1, 3, 56, 64, generator=torch.Generator().manual_seed(7))
    batched = run_single_pass(model, x, tile=32, overlap=8, max_batch=16)
    solo = run_single_pass(model, x, tile=32, overlap=8, max_batch=1)
    assert (batched - solo).abs().max().item() <= 1e-4


def test_restore_cli_runs_single_pass(tmp_path: Path, model: torch.nn.Module,
                                      capsys: pytest.CaptureFixture) -> None:
    """``diffmamba restore`` with a VmambaIR checkpoint: whole under the budget, else tiles."""
    from service.cli import main

    small, large = random_image(20, 28, seed=4), random_image(40, 56, seed=5)
    Image.fromarray(small).save(tmp_path / "small.png")
    Image.fromarray(large).save(tmp_path / "large.png")
    out = tmp_path / "out"
    code = main(["restore", str(tmp_path / "small.png"), str(tmp_path / "large.png"),
                 "--checkpoint", str(CKPT), "--output", str(out), "--suffix", "", "--device", "cpu",
                 "--tile", "32", "--overlap", "8", "--whole-max-pixels", str(32 * 32)])
    assert code == 0 and "2 restored, 0 failed" in capsys.readouterr().out
    _assert_same_8bit(_pixels((out / "small.png").read_bytes()), _expected(model, small, None))
    _assert_same_8bit(_pixels((out / "large.png").read_bytes()), _expected(model, large, 32))
