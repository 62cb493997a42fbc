"""``diffmamba eval --task sr``: bicubic and second-order LR pairs, bicubic and Lanczos rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serving import FIXTURES

from service.cli import main
from service.evaluation import ModelRestorer, evaluate
from service.evaluation.pairs import Pair
from service.evaluation.sr_pairs import sr_pairs
from service.evaluation.upscale import bicubic_up, lanczos_up
from service.models import load_model

SR_CKPT = FIXTURES / "vmambair_sr" / "tiny_checkpoint.pth"


def test_pairs_are_x4_and_seeded() -> None:
    bicubic = sr_pairs("bicubic", seed=0, size=34, limit=2)
    assert [p.clean.shape for p in bicubic] == [(32, 32, 3)] * 2  # trimmed to a multiple of 4
    assert all(p.degraded.shape == (8, 8, 3) and p.scale == 4 for p in bicubic)
    real = sr_pairs("second-order", seed=0, size=32, limit=1)
    again = sr_pairs("second-order", seed=0, size=32, limit=1)
    assert np.array_equal(real[0].degraded, again[0].degraded)
    assert not np.array_equal(real[0].degraded, bicubic[0].degraded)
    with pytest.raises(ValueError, match="x4 apart"):
        Pair("x", np.zeros((8, 8, 3), np.float32), np.zeros((30, 32, 3), np.float32), scale=4)


def test_evaluate_scores_the_model_against_both_upscalers() -> None:
    pairs = sr_pairs("bicubic", seed=0, size=32, limit=1)
    restorer = ModelRestorer(load_model(SR_CKPT), tile=32, overlap=8)
    result = evaluate("sr", restorer, pairs)
    assert result.rows() == ("input", "baseline", "model")
    assert result.input_name == "bicubic x4" and result.baseline_name == "Lanczos x4"
    pair = pairs[0]
    assert bicubic_up(pair.degraded).shape == lanczos_up(pair.degraded).shape == pair.clean.shape
    # a bicubic LR is best undone by bicubic-like upscaling: both beat a flat grey guess
    assert result.images[0].input.psnr > 15 and result.images[0].baseline.psnr > 15


def test_cli_writes_one_table_per_lr_generator(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sr.json"
    code = main(["eval", "--task", "sr", "--checkpoint", str(SR_CKPT), "--size", "32",
                 "--limit", "1", "--tile", "32", "--overlap", "8", "--device", "cpu",
                 "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "bicubic LR inputs" in printed and "second-order LR inputs" in printed
    assert "input (bicubic x4)" in printed and "baseline (Lanczos x4)" in printed
    data = json.loads(out.read_text())
    assert set(data) == {"bicubic", "second-order"}
    for table in data.values():
        assert set(table["mean"]) >= {"input", "baseline", "model"}
        assert {"psnr_y", "ssim_y"} <= set(table["mean"]["model"])
    assert main(["eval", "--task", "sr", "--grid", "--baseline-only"]) == 2
