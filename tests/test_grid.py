"""The robustness grid: cell generators, seeding, ranges, targets and ``diffmamba eval --grid``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.cli import eval_cmd
from service.data.degrade.eval_blur import disk_kernel, line_kernel
from service.data.degrade.eval_noise import poisson_gaussian_noise
from service.evaluation.grid import GRID, Cell, cell_rng, cells_for, grid_pairs
from service.evaluation.grid_report import markdown_grid
from service.evaluation.grid_runner import GridResult, run_grid
from service.evaluation.metrics import compare

CKPT = Path(__file__).parent / "fixtures" / "diffmamba" / "tiny_withbias_checkpoint.pth"
ALL_CELLS = [(task, i, cell) for task, cells in GRID.items() for i, cell in enumerate(cells)]
CELL_IDS = [f"{task}:{cell.name}" for task, _, cell in ALL_CELLS]


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus 8-bit texture: something blur and noise both visibly change."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.3 * np.sin(6 * x + c) * np.cos(5 * y - c) for c in range(3)], -1)
    texture = rng.uniform(-0.15, 0.15, (h, w, 1))
    return (np.round(np.clip(base + texture, 0, 1) * 255) / 255).astype(np.float32)


def _images() -> dict[str, np.ndarray]:
    return {"a": _photo(64, 72, 0), "b": _photo(72, 64, 1)}


# --- generators ---------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "index", "cell"), ALL_CELLS, ids=CELL_IDS)
def test_cells_are_deterministic_8_bit_and_seed_dependent(task: str, index: int,
                                                          cell: Cell) -> None:
    clean = _images()["a"]
    first = cell.apply(clean, cell_rng(0, index, 0))
    again = cell.apply(clean, cell_rng(0, index, 0))
    other = cell.apply(clean, cell_rng(1, index, 0))
    assert first.dtype == np.float32 and first.shape == clean.shape
    assert np.array_equal(first, again)
    assert first.min() >= 0.0 and first.max() <= 1.0
    levels = np.round(first * np.float32(255.0))
    assert np.array_equal(first, levels / np.float32(255.0))  # on 8-bit levels
    if cell.is_identity:
        assert np.array_equal(first, clean) and np.array_equal(other, clean)
    else:
        assert not np.array_equal(first, other)


@pytest.mark.parametrize(("task", "index", "cell"), ALL_CELLS, ids=CELL_IDS)
def test_cell_parameters_lie_in_their_documented_ranges(task: str, index: int,
                                                        cell: Cell) -> None:
    ranges = cell.ranges()
    assert set(cell.params) <= set(ranges)
    if cell.is_identity:
        assert not cell.params
    for name, value in cell.params.items():
        lo, hi = ranges[name]
        assert lo <= value <= hi, (name, value, (lo, hi))


@pytest.mark.parametrize(("task", "index", "cell"), ALL_CELLS, ids=CELL_IDS)
def test_out_of_range_parameters_raise(task: str, index: int, cell: Cell) -> None:
    clean = _images()["a"][:24, :24]
    for name, (lo, hi) in cell.ranges().items():
        integer = isinstance(cell.params.get(name), int)
        step = 2 if integer else max((hi - lo) * 0.1, 1e-6)
        for bad in (hi + step, lo - step):
            params = {**cell.params, name: bad}
            with pytest.raises(ValueError, match=name):
                cell.generator(clean, np.random.default_rng(0), **params)
    with pytest.raises(ValueError):
        cell.apply(clean * 2.0, np.random.default_rng(0))  # not an image in [0, 1]


@pytest.mark.parametrize("task", list(GRID))
def test_every_degraded_cell_degrades(task: str) -> None:
    clean = _images()["a"]
    for index, cell in enumerate(cells_for(task)):
        score = compare(cell.apply(clean, cell_rng(0, index, 0)), clean).psnr
        if cell.is_identity:
            assert score == 100.0  # capped: identical
        else:
            assert np.isfinite(score) and score < 40.0, (cell.name, score)


def test_strength_orders_the_input_psnr() -> None:
    images = _images()

    def mean_psnr(task: str, name: str) -> float:
        index = [c.name for c in cells_for(task)].index(name)
        pairs = grid_pairs(task, index, images=images)
        return float(np.mean([compare(p.degraded, p.clean).psnr for p in pairs]))

    for family in ("screen", "streak"):
        light, medium, heavy = (mean_psnr("derain", f"{family}-{s}")
                                for s in ("light", "medium", "heavy"))
        assert light > medium > heavy, (family, light, medium, heavy)
    sigmas = [mean_psnr("denoise", f"gaussian-{s}") for s in (5, 10, 15, 25, 35, 50)]
    assert sigmas == sorted(sigmas, reverse=True)
    assert mean_psnr("deblur", "motion-7@0") > mean_psnr("deblur", "motion-25@45")
    assert mean_psnr("deblur", "defocus-2") > mean_psnr("deblur", "defocus-6")


def test_kernels_are_centred_and_shaped() -> None:
    horizontal = line_kernel(7, 0)
    assert horizontal.sum() == pytest.approx(1.0)
    c = horizontal.shape[0] // 2
    assert np.count_nonzero(horizontal[c] > 1e-6) == 7 and horizontal[c].sum() == pytest.approx(1)
    assert np.allclose(line_kernel(7, 90), horizontal.T, atol=1e-6)
    for k in (line_kernel(25, 33), disk_kernel(4.5)):
        ys, xs = np.mgrid[: k.shape[0], : k.shape[1]]
        mid = k.shape[0] // 2
        assert (k * ys).sum() == pytest.approx(mid, abs=1e-4)
        assert (k * xs).sum() == pytest.approx(mid, abs=1e-4)
    disk = disk_kernel(3)
    assert disk[3, 3] == pytest.approx(disk.max()) and disk[0, 0] == 0.0


def test_poisson_gaussian_has_the_documented_variance() -> None:
    flat = np.full((256, 256, 3), 128 / 255, np.float32)
    noisy = poisson_gaussian_noise(flat, np.random.default_rng(0), gain=0.004, read_sigma=5.0)
    expected = np.sqrt(0.004 * 128 / 255 + (5 / 255) ** 2)
    assert noisy.std() == pytest.approx(expected, rel=0.05)
    assert noisy.mean() == pytest.approx(128 / 255, abs=2e-3)


# --- seeding and pairs --------------------------------------------------------------------


def test_grid_pairs_seed_each_cell_and_image_independently() -> None:
    images = _images()
    first = grid_pairs("denoise", 4, seed=3, images=images, size=48)
    again = grid_pairs("denoise", 4, seed=3, images=images, size=48)
    other = grid_pairs("denoise", 4, seed=4, images=images, size=48)
    assert [p.name for p in first] == ["a", "b"] and first[0].degraded.shape == (48, 48, 3)
    assert all(np.array_equal(p.degraded, q.degraded) for p, q in zip(first, again, strict=True))
    assert not any(np.array_equal(p.degraded, q.degraded)
                   for p, q in zip(first, other, strict=True))
    # image i of cell c: rng [seed, c, i], degraded at full size, then cropped
    from service.evaluation.pairs import center_crop

    cell = cells_for("denoise")[4]
    expected = center_crop(cell.apply(images["b"], cell_rng(3, 4, 1)), 48)
    assert np.array_equal(first[1].degraded, expected)
    assert np.array_equal(grid_pairs("denoise", 4, seed=3, images=images, size=48,
                                     limit=1)[0].degraded, first[0].degraded)
    # the same sigma in another cell slot draws different noise
    assert not np.array_equal(cell_rng(0, 1, 0).random(4), cell_rng(0, 2, 0).random(4))
    with pytest.raises(ValueError, match=">= 0"):
        cell_rng(-1, 0, 0)
    with pytest.raises(ValueError, match="cells"):
        grid_pairs("denoise", len(cells_for("denoise")), images=images)
    with pytest.raises(ValueError, match="no robustness grid"):
        cells_for("sharpen")


# --- runner and targets -------------------------------------------------------------------


def _oracle(task: str, images: dict[str, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """A restorer that knows every clean image: made from the (deterministic) grid itself."""
    answers = {p.degraded.tobytes(): p.clean for i in range(len(cells_for(task)))
               for p in grid_pairs(task, i, images=images)}
    return lambda degraded: answers[degraded.tobytes()]


def _status(result: GridResult) -> dict[str, str]:
    return {t.target: t.status for t in result.targets()}


@pytest.mark.parametrize("task", list(GRID))
def test_targets_met_by_an_oracle_and_missed_by_doing_nothing(task: str) -> None:
    images = _images()
    oracle = run_grid(task, _oracle(task, images), images=images, baseline=False)
    status = _status(oracle)
    assert status["no cell below its input"] == "met"
    assert status["identity ≥ 33 dB"] == "met"
    gains = [k for k in status if k.startswith("≥ +")]
    assert gains and all(status[k] == "met" for k in gains)
    assert all(v == "n/a" for k, v in status.items() if k.startswith("above"))  # no baseline
    assert oracle.cells[0].delta() is None and oracle.cells[0].mean("input").psnr == np.inf

    nothing = run_grid(task, lambda x: x, images=images, baseline=False)
    status = _status(nothing)
    assert status["no cell below its input"] == "met"  # equal is not below
    assert status["identity ≥ 33 dB"] == "met"
    assert all(status[k] == "not met" for k in gains)


def test_a_damaging_restorer_fails_and_baseline_only_is_n_a() -> None:
    images = {"a": _images()["a"]}
    dark = run_grid("derain", lambda x: x * 0.5, images=images, cells=[0, 1, 4])
    status = _status(dark)
    assert status["no cell below its input"] == "not met"
    assert status["identity ≥ 33 dB"] == "not met"
    assert status["above the row median in every derain cell"] == "not met"
    measured = {t.target: t.measured for t in dark.targets()}
    assert "screen-light" in measured["no cell below its input"]
    only = run_grid("derain", None, images=images, cells=[0, 1])
    assert {t.status for t in only.targets()} == {"n/a"}
    md = markdown_grid(only)
    assert "model" not in md.split("\n")[0] and "∞ / 1.0000" in md


# --- CLI ----------------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffmamba")
    eval_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    return args.run(args)


@pytest.fixture
def tiny_photos(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Stand-ins for the scikit-image photos, so CLI tests need neither downloads nor time."""
    import service.data.evaluation as evaluation

    images = _images()
    monkeypatch.setattr(evaluation, "evaluation_images", lambda names=None: dict(images))
    return images


def test_cli_grid_writes_json_and_markdown(tmp_path: Path, tiny_photos: dict,
                                           capsys: pytest.CaptureFixture) -> None:
    out, md = tmp_path / "g.json", tmp_path / "g.md"
    code = _run(["--task", "derain", "--grid", "--checkpoint", str(CKPT), "--size", "32",
                 "--limit", "1", "--steps", "1", "--device", "cpu", "--json", str(out),
                 "--markdown", str(md)])
    assert code == 0
    data = json.loads(out.read_text())  # strict JSON: no Infinity / NaN
    assert data["kind"] == "grid" and data["task"] == "derain" and data["seed"] == 0
    assert [c["name"] for c in data["cells"]] == [c.name for c in cells_for("derain")]
    assert data["source"]["names"] == ["a"] and data["model"]["steps"] == 1
    identity = data["cells"][0]
    assert identity["mean"]["input"]["psnr"] is None and identity["mean"]["input"]["ssim"] == 1
    assert identity["delta"] == {"psnr": None, "psnr_y": None}
    for cell in data["cells"]:
        assert set(cell["mean"]) == {"input", "baseline", "model", "model_seconds"}
        assert len(cell["images"]) == 1 and cell["images"][0]["rng"] == [0, cell["index"], 0]
        assert (cell["images"][0]["height"], cell["images"][0]["width"]) == (32, 32)
        if cell["index"]:
            assert isinstance(cell["delta"]["psnr"], float)
    assert [t["status"] in {"met", "not met"} for t in data["targets"]] == [True] * 4
    text = md.read_text()
    assert all(f"| {c.name} |" in text for c in cells_for("derain"))
    assert "| ∞ / 1.0000 |" in text and "#### Targets" in text
    assert "robustness grid" in capsys.readouterr().out


def test_cli_grid_baseline_only(tmp_path: Path, tiny_photos: dict) -> None:
    out = tmp_path / "g.json"
    assert _run(["--task", "deblur", "--grid", "--baseline-only", "--size", "24",
                 "--json", str(out), "--seed", "7"]) == 0
    data = json.loads(out.read_text())
    assert data["model"] is None and data["seed"] == 7 and len(data["cells"]) == 19
    assert set(data["cells"][1]["mean"]) == {"input", "baseline", "model_seconds"}
    assert {t["status"] for t in data["targets"]} == {"n/a"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grid"], "--checkpoint is required"),
        (["--grid", "--baseline-only", "--seed", "-1"], "--seed >= 0"),
        (["--grid", "--checkpoint", "/nonexistent.pth"], "cannot load"),
    ],
)
def test_cli_grid_bad_arguments(argv: list[str], message: str,
                                capsys: pytest.CaptureFixture) -> None:
    assert _run(["--task", "denoise", *argv]) == 2
    err = capsys.readouterr().err
    assert "diffmamba: error:" in err and message in err


def test_cli_grid_on_photos_of_a_folder(tmp_path: Path) -> None:
    from PIL import Image

    photos = tmp_path / "val"
    photos.mkdir()
    for name, image in _images().items():
        Image.fromarray((image * 255).round().astype(np.uint8)).save(photos / f"{name}.png")
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "g.json"
    assert _run(["--task", "denoise", "--grid", "--baseline-only", "--photos", str(photos),
                 "--size", "24", "--limit", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["source"]["names"] == ["a"] and data["source"]["photos"] == str(photos)
    assert [len(c["images"]) for c in data["cells"]] == [1] * len(cells_for("denoise"))


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        (None, [], "with --grid"),
        ("missing", ["--grid"], "not a folder"),
        ("empty", ["--grid"], "no images"),
        ("broken", ["--grid"], "not a readable image"),
    ],
)
def test_cli_grid_photos_errors(setup: str | None, extra: list[str], message: str,
                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "photos"
    if setup in ("empty", "broken"):
        folder.mkdir()
    if setup == "broken":
        (folder / "x.png").write_bytes(b"not a png")
    if setup is None:
        folder.mkdir()
    assert _run(["--task", "denoise", "--baseline-only", *extra, "--photos", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "diffmamba: error:" in err and message in err


@pytest.mark.parametrize("other", [["--pairs", "/tmp"], ["--synthetic"]])
def test_cli_grid_excludes_other_pair_sources(other: list[str],
                                              capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        _run(["--task", "denoise", "--grid", "--baseline-only", *other])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_cli_grid_on_the_real_photos(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    out = tmp_path / "g.json"
    assert _run(["--task", "denoise", "--grid", "--baseline-only", "--no-baseline",
                 "--size", "32", "--limit", "1", "--json", str(out)]) == 2  # nothing to run
    assert _run(["--task", "derain", "--grid", "--baseline-only", "--size", "32", "--limit",
                 "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["source"]["names"] == ["astronaut"]
    inputs = {c["name"]: c["mean"]["input"]["psnr"] for c in data["cells"]}
    assert inputs["screen-light"] > inputs["screen-heavy"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["derain.safetensors", "derain-diffmamba.safetensors"])
def test_grid_on_a_shipped_model(model: str, tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    path = Path(__file__).parents[1] / "models" / model
    out = tmp_path / "g.json"
    assert _run(["--task", "derain", "--grid", "--checkpoint", str(path), "--size", "64",
                 "--limit", "2", "--device", "cpu", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert all(c["mean"]["model"]["psnr"] is not None for c in data["cells"])
    assert [t["status"] in {"met", "not met"} for t in data["targets"]] == [True] * 4
