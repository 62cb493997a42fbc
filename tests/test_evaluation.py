"""Evaluation: paper-convention metrics, classical baselines, the runner and ``diffmamba eval``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import eval_cmd
from service.evaluation import (
    BASELINES,
    DERAIN_CANDIDATES,
    MAX_PSNR,
    Metrics,
    ModelRestorer,
    Pair,
    center_crop,
    compare,
    evaluate,
    folder_pairs,
    markdown_table,
    psnr,
    rgb_to_y,
    ssim,
    synthetic_pairs,
    text_table,
    to_uint8,
)
from service.evaluation.baselines import box_mean, gaussian_blur, guided_filter, median_filter

CKPT = Path(__file__).parent / "fixtures" / "diffmamba" / "tiny_withbias_checkpoint.pth"


def _smooth(h: int = 48, w: int = 48) -> np.ndarray:
    """A smooth colour image (gradients and a slow sinusoid), float32 in [0.2, 0.8]."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.5 + 0.15 * np.sin(x / 9.0) * np.cos(y / 13.0)
    return np.stack([base, 0.8 * base + 0.1, 0.3 + 0.4 * x / w], axis=2).astype(np.float32)


def _quantised(img: np.ndarray) -> np.ndarray:
    return (np.round(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


# --- metrics -------------------------------------------------------------------------------


def test_psnr_of_a_one_level_offset_is_48_13_db() -> None:
    a = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255), abs=1e-4)
    assert psnr(a, a + 1) == pytest.approx(48.1308, abs=1e-4)


def test_identical_images_are_capped_at_max_psnr_and_ssim_1() -> None:
    img = _smooth(20, 24)
    m = compare(img, img)
    assert m.psnr == m.psnr_y == MAX_PSNR == 100.0
    assert m.ssim == pytest.approx(1.0) and m.ssim_y == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(40, 37, 3), (23, 30)])
def test_ssim_matches_skimage_gaussian_convention(shape: tuple[int, ...]) -> None:
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, shape).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, shape), 0, 255)
    expected = skm.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        channel_axis=2 if len(shape) == 3 else None)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-4)


def test_y_channel_of_white_black_and_primaries() -> None:
    colours = np.array([[[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]], np.float32)
    expected = [16 + 65.481 + 128.553 + 24.966, 16.0, 16 + 65.481, 16 + 128.553, 16 + 24.966]
    assert rgb_to_y(colours)[0] == pytest.approx(expected)
    assert rgb_to_y(colours)[0, 0] == pytest.approx(235.0)
    assert rgb_to_y(to_uint8(colours)) == pytest.approx(rgb_to_y(colours))


def test_metrics_quantise_to_8_bit_first() -> None:
    clean = _quantised(_smooth(24, 24))
    tiny = clean + np.float32(0.3 / 255)  # below half a level: the saved file is identical
    assert compare(tiny, clean).psnr == MAX_PSNR
    assert to_uint8(np.array([0.5 / 255 + 1e-4, 1.2, -0.1])).tolist() == [1, 255, 0]


def test_crop_border_ignores_the_border() -> None:
    clean = _quantised(_smooth(24, 24))
    damaged = clean.copy()
    damaged[:2] = 0.0
    assert compare(damaged, clean).psnr < 40
    assert compare(damaged, clean, crop_border=2).psnr == MAX_PSNR
    with pytest.raises(ValueError, match="crop_border"):
        compare(damaged, clean, crop_border=12)


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="differ"):
        compare(np.zeros((4, 4, 3), np.float32), np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        to_uint8(np.full((2, 2, 3), np.nan, np.float32))


def test_metrics_mean_is_per_field() -> None:
    m = Metrics.mean([Metrics(10, 0.5, 20, 0.6), Metrics(20, 0.7, 30, 0.8)])
    assert m == Metrics(15, pytest.approx(0.6), 25, pytest.approx(0.7))


# --- baselines -----------------------------------------------------------------------------


def _gain(restorer, degraded: np.ndarray, clean: np.ndarray) -> float:
    return compare(restorer(degraded), clean).psnr - compare(degraded, clean).psnr


def test_nlm_denoises_a_noisy_smooth_image() -> None:
    pytest.importorskip("cv2")
    clean = _quantised(_smooth())
    noisy = _quantised(clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape))
    assert _gain(BASELINES["denoise"].restore, noisy, clean) > 8.0


def _rainy() -> tuple[np.ndarray, np.ndarray]:
    clean = _quantised(_smooth())
    rainy = clean.copy()
    rng = np.random.default_rng(2)
    for col in rng.choice(48, size=6, replace=False):
        top = int(rng.integers(0, 30))
        rainy[top : top + 15, col] = np.minimum(1.0, rainy[top : top + 15, col] + 0.5)
    return rainy, clean


def test_median_derain_removes_thin_streaks() -> None:
    rainy, clean = _rainy()
    assert _gain(BASELINES["derain"].restore, rainy, clean) > 15.0


@pytest.mark.parametrize("name", list(DERAIN_CANDIDATES))
def test_every_derain_candidate_helps(name: str) -> None:
    rainy, clean = _rainy()
    assert _gain(DERAIN_CANDIDATES[name].restore, rainy, clean) > 3.0


def test_unsharp_sharpens_a_gaussian_blurred_edge_image() -> None:
    y, x = np.mgrid[0:48, 0:48]
    squares = ((x // 12 + y // 12) % 2).astype(np.float32)
    clean = _quantised(0.25 + 0.5 * np.repeat(squares[..., None], 3, axis=2))
    blurred = _quantised(gaussian_blur(clean, 1.5))
    assert _gain(BASELINES["deblur"].restore, blurred, clean) > 0.5


def test_box_mean_and_guided_filter_reference_values() -> None:
    img = np.random.default_rng(3).random((9, 11))
    padded = np.pad(img, 2, mode="reflect")
    naive = np.array([[padded[i : i + 5, j : j + 5].mean() for j in range(11)] for i in range(9)])
    assert box_mean(img, 2) == pytest.approx(naive)
    flat = np.full((10, 10, 3), 0.4)
    assert guided_filter(flat, flat, 3, 0.01) == pytest.approx(flat)
    # a huge eps turns the filter into a (twice applied) box blur of the source
    assert guided_filter(img, img, 1, 1e9) == pytest.approx(box_mean(box_mean(img, 1), 1))


def test_median_filter_window_shape() -> None:
    img = np.zeros((9, 9, 3), np.float32)
    img[:, 4] = 1.0  # a vertical line: removed by a row median, kept by a column median
    assert median_filter(img, (1, 3)).max() == 0.0
    assert median_filter(img, (3, 1))[:, 4].min() == 1.0
    with pytest.raises(ValueError, match="odd"):
        median_filter(img, (2, 3))


# --- pairs and runner ----------------------------------------------------------------------


def _tiny_images() -> dict[str, np.ndarray]:
    return {"a": _quantised(_smooth(20, 28)), "b": _quantised(_smooth(24, 18)[::-1])}


def test_synthetic_pairs_are_seeded_and_cropped() -> None:
    first = synthetic_pairs("denoise", seed=5, size=16, images=_tiny_images())
    again = synthetic_pairs("denoise", seed=5, size=16, images=_tiny_images())
    other = synthetic_pairs("denoise", seed=6, size=16, images=_tiny_images())
    assert [p.name for p in first] == ["a", "b"]
    assert first[0].degraded.shape == (16, 16, 3) and first[1].degraded.shape == (16, 16, 3)
    assert all(np.array_equal(p.degraded, q.degraded) for p, q in zip(first, again, strict=True))
    assert not np.array_equal(first[0].degraded, other[0].degraded)
    from service.data.degrade import degrade

    b = _tiny_images()["b"]  # image i uses default_rng(seed + i)
    expected = degrade("denoise", b, np.random.default_rng(5 + 1), evaluation=True)
    assert np.array_equal(first[1].degraded, center_crop(expected, 16))
    assert len(synthetic_pairs("denoise", size=16, limit=1, images=_tiny_images())) == 1
    assert center_crop(np.zeros((10, 4, 3)), 6).shape == (6, 4, 3)


def test_runner_identity_oracle_and_no_baseline() -> None:
    pairs = synthetic_pairs("denoise", seed=0, images=_tiny_images())
    clean = {id(p.degraded): p.clean for p in pairs}
    ident = evaluate("denoise", lambda x: x, pairs, baseline=False)
    assert ident.rows() == ("input", "model")
    for r in ident.images:
        assert r.model == r.input and r.baseline is None and r.model_seconds >= 0
    assert ident.mean("model") == ident.mean("input")
    oracle = evaluate("denoise", lambda x: clean[id(x)], pairs, baseline=False)
    assert oracle.mean("model").psnr == MAX_PSNR and oracle.mean("model").ssim_y == 1.0
    data = json.loads(json.dumps(oracle.to_dict()))  # finite: JSON round-trips
    assert data["mean"]["model"]["psnr"] == MAX_PSNR
    assert ">=100" in text_table(oracle)


def test_runner_baseline_only_and_shape_check() -> None:
    rainy, clean = _rainy()
    pairs = [Pair("r", rainy, clean)]
    result = evaluate("derain", None, pairs)
    assert result.rows() == ("input", "baseline")
    assert result.baseline_name == BASELINES["derain"].name
    assert result.mean("baseline").psnr > result.mean("input").psnr
    assert result.mean_seconds() is None
    with pytest.raises(ValueError, match="restored"):
        evaluate("derain", lambda x: x[:-1], pairs, baseline=False)
    with pytest.raises(ValueError, match="no evaluation pairs"):
        evaluate("derain", None, [])


def test_tables_list_every_row_and_the_means() -> None:
    pairs = synthetic_pairs("deblur", seed=0, images=_tiny_images())
    result = evaluate("deblur", lambda x: x, pairs)
    text = text_table(result)
    assert text.splitlines()[0].split() == ["image", "method", "PSNR", "SSIM", "PSNR-Y",
                                            "SSIM-Y", "s/img"]
    assert len(text.splitlines()) == 1 + 3 * 3
    md = markdown_table(result)
    assert md.count("\n") == 2 + 9 and "| **mean** | **model** |" in md


def test_model_restorer_uses_tiles_above_the_tile_size() -> None:
    from service.models import load_checkpoint

    model = load_checkpoint(CKPT).model
    img = _quantised(_smooth(24, 20))
    whole = ModelRestorer(model, steps=1, tile=32, overlap=8)
    tiled = ModelRestorer(model, steps=1, tile=16, overlap=8)
    a, b = whole(img), tiled(img)
    assert a.shape == b.shape == img.shape and np.isfinite(b).all()
    assert np.array_equal(a, whole(img))  # fixed sampler seed: repeatable
    with pytest.raises(ValueError, match="overlap"):
        ModelRestorer(model, steps=1, tile=16, overlap=16)


def test_folder_pairs(tmp_path: Path) -> None:
    for sub in ("input", "target"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    for name in ("x.png", "y.png"):
        for sub in ("input", "target"):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
                tmp_path / sub / name)
    pairs = folder_pairs(tmp_path, size=8, limit=1)
    assert [p.name for p in pairs] == ["x.png"] and pairs[0].clean.shape == (8, 8, 3)


# --- CLI -----------------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffmamba")
    eval_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    return args.run(args)


def test_cli_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("skimage")
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    code = _run(["--task", "derain", "--checkpoint", str(CKPT), "--synthetic", "--limit", "1",
                 "--size", "32", "--steps", "1", "--device", "cpu", "--json", str(out),
                 "--markdown", str(md)])
    assert code == 0
    data = json.loads(out.read_text())
    assert {"task", "baseline", "source", "model", "images", "mean"} <= set(data)
    image = data["images"][0]
    assert image["name"] == "astronaut" and (image["height"], image["width"]) == (32, 32)
    for row in ("input", "baseline", "model"):
        assert set(data["mean"][row]) == {"psnr", "ssim", "psnr_y", "ssim_y"}
    assert data["mean"]["model_seconds"] > 0
    assert data["model"]["steps"] == 1 and data["source"]["seed"] == 0
    assert "| **mean** | **model** |" in md.read_text()
    assert "mean" in capsys.readouterr().out


def test_cli_baseline_only_on_folder_pairs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rainy, clean = _rainy()
    for sub, img in (("input", rainy), ("target", clean)):
        (tmp_path / sub).mkdir()
        Image.fromarray(to_uint8(img)).save(tmp_path / sub / "r.png")
    out = tmp_path / "r.json"
    assert _run(["--task", "derain", "--baseline-only", "--pairs", str(tmp_path),
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["mean"]) == {"input", "baseline", "model_seconds"}
    assert data["model"] is None and data["source"]["kind"] == "pairs"
    assert data["mean"]["baseline"]["psnr"] > data["mean"]["input"]["psnr"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "denoise"], "--checkpoint is required"),
        (["--task", "denoise", "--baseline-only", "--checkpoint", "x.pth"], "takes no"),
        (["--task", "denoise", "--baseline-only", "--no-baseline"], "nothing to evaluate"),
        (["--task", "denoise", "--baseline-only", "--pairs", "/nonexistent"], "not a folder"),
        (["--task", "denoise", "--checkpoint", str(CKPT), "--tile", "30"], "--tile"),
        (["--task", "denoise", "--checkpoint", "/nonexistent.pth"], "cannot load"),
    ],
)
def test_cli_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert "diffmamba: error:" in err and message in err


def test_cli_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        _run(["--task", "sharpen", "--baseline-only"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        _run(["--task", "denoise", "--baseline-only", "--size", "0"])
