"""Grid validation in training: the robustness grid's cells on held-out pool photos choose the
kept checkpoint (best.safetensors), with the two "never worse" targets as penalties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from training_helpers import TINY_VMAMBAIR as TINY
from training_helpers import TINY_VMAMBAIR_ARGS as TINY_ARGS
from training_helpers import make_pool, run_options, train_cli

from service.evaluation.grid import cells_for
from service.models import load_checkpoint
from service.nn.vmambair_sr import MambaRealSR11Config
from service.training import TrainConfig, Trainer
from service.training.data import grid_validation_data
from service.training.grid_validation import (
    CellScore,
    GridScore,
    grid_validation_set,
    score_grid,
    sr_validation_set,
)
from service.training.state import load_state, state_path
from service.training.trainer import BEST_NAME, VALIDATED_DIR

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pool(tmp_path_factory.mktemp("pool"), 40)


def _config(pool: Path, **changes: object) -> TrainConfig:
    base: dict[str, object] = dict(
        model=TINY.to_dict(), arch="vmambair", task="denoise", clean=str(pool), stage="1",
        max_iters=(4, 1), lr=(1e-3, 1e-4), patch_schedule=((16, 0),), batch_schedule=((2, 0),),
        val_count=1, val_patch=32, epoch_size=4, val_grid=2,
    )
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_score_penalises_a_worse_cell_and_a_damaged_clean_photo() -> None:
    cells = (CellScore("identity", True, 100.0, 30.0), CellScore("a", False, 20.0, 22.0),
             CellScore("b", False, 30.0, 29.0))
    score = GridScore(cells)
    assert score.mean_gain == pytest.approx(0.5) and score.worst_gain == pytest.approx(-1.0)
    assert score.score == pytest.approx(0.5 - 1.0 - 3.0)
    # nothing made worse, clean photos above 33 dB: the score is the mean gain
    fine = GridScore((CellScore("identity", True, 100.0, 40.0), CellScore("a", False, 20, 23),
                      CellScore("b", False, 30, 31)))
    assert fine.score == pytest.approx(2.0)
    assert fine.per_cell() == {"identity": 40.0, "a": 3.0, "b": 1.0}


def test_the_set_covers_every_cell_and_is_the_same_on_every_build(pool: Path) -> None:
    a = grid_validation_set("deblur", pool / "val", count=2, size=35, seed=0, multiple=8)
    b = grid_validation_set("deblur", pool / "val", count=2, size=35, seed=0, multiple=8)
    assert a is not None and b is not None
    assert a.names == tuple(c.name for c in cells_for("deblur"))
    assert a.identity[0] and not any(a.identity[1:])
    assert a.clean.shape == (1, 3, 32, 32)  # one val photo; 35 rounded down to the multiple
    assert torch.equal(a.degraded[0], a.clean)  # identity
    for x, y in zip(a.degraded, b.degraded, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.degraded[1], a.clean)


def test_no_set_where_the_grid_does_not_apply(pool: Path, tmp_path: Path) -> None:
    assert grid_validation_set("sr", pool / "val", 2, 32) is None
    assert grid_validation_set("denoise", pool / "val", 0, 32) is None
    assert grid_validation_set("denoise", pool / "val", 2, 12) is None  # below the minimum
    empty = tmp_path / "empty"
    empty.mkdir()
    assert grid_validation_set("denoise", empty, 2, 32) is None
    assert grid_validation_data(_config(pool, val_grid=0)) is None
    assert grid_validation_data(_config(pool)) is not None


def test_identity_restorer_scores_zero_gain(pool: Path) -> None:
    vset = grid_validation_set("denoise", pool / "val", 1, 32)
    assert vset is not None
    score = score_grid(vset, lambda x: x)
    assert score.gains == [0.0] * (len(vset.names) - 1)
    assert score.identity_psnr == 100.0 and score.score == 0.0
    grey = score_grid(vset, lambda x: torch.full_like(x, 0.5))
    assert grey.score < -3


def test_training_keeps_the_best_scoring_weights(pool: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    trainer = Trainer.create(_config(pool), run_options(work, val_every=2))
    assert trainer.run() == "done"
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    graded = [e for e in log if "grid_score" in e and "step" in e]
    assert {e["step"] for e in graded} >= {2, 4}
    assert all(set(e.get("grid_cells", {})) <= {c.name for c in cells_for("denoise")}
               for e in graded)
    bests = [e for e in log if e.get("event") == "best"]
    assert bests and bests[0]["step"] == 2
    scores = [e["score"] for e in bests]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)  # strictly improving
    best = max((e for e in graded), key=lambda e: e["grid_score"])
    assert bests[-1]["score"] == pytest.approx(best["grid_score"])
    state = load_state(state_path(work))
    assert state["best"]["step"] == bests[-1]["step"]
    assert load_checkpoint(work / BEST_NAME).config == TINY
    with safe_open(str(work / BEST_NAME), "pt") as f:
        meta = f.metadata()
    assert float(meta["grid_score"]) == pytest.approx(bests[-1]["score"], abs=1e-4)
    assert meta["iterations"] == str(bests[-1]["step"])


def test_every_validated_step_can_be_kept(pool: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    trainer = Trainer.create(_config(pool), run_options(work, val_every=2, keep_validated=True))
    assert trainer.run() == "done"
    kept = sorted((work / VALIDATED_DIR).iterdir())
    # steps 2 and 4 (the stage's end validates step 4 once more: the same weights, rewritten)
    assert [p.name for p in kept] == ["stage1-step000002.safetensors",
                                      "stage1-step000004.safetensors"]
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    scores = {e["step"]: e["grid_score"] for e in log if "grid_score" in e and "step" in e}
    for path, step in zip(kept, (2, 4), strict=True):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert meta["iterations"] == str(step)
        assert float(meta["grid_score"]) == pytest.approx(scores[step], abs=1e-4)
        assert load_checkpoint(path).config == TINY
    final = load_checkpoint(kept[-1]).model.state_dict()
    for name, value in load_checkpoint(work / "stage1.safetensors").model.state_dict().items():
        assert torch.equal(value, final[name]), name
    assert not list((work / VALIDATED_DIR).glob("*.pth"))
    # off by default
    Trainer.create(_config(pool), run_options(tmp_path / "plain", val_every=2)).run()
    assert not (tmp_path / "plain" / VALIDATED_DIR).exists()


def test_a_fine_tuning_run_scores_its_starting_weights_first(pool: Path, tmp_path: Path) -> None:
    start = tmp_path / "start"
    Trainer.create(_config(pool, val_grid=0), run_options(start)).run()
    init = start / "stage1.safetensors"
    work = tmp_path / "tune"
    trainer = Trainer.create(_config(pool, init=str(init), max_iters=(2, 1)),
                             run_options(work, val_every=5))
    first = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in first if e.get("event") == "best"] == [0]
    trainer.run()


def test_cli_exports_the_best_weights(pool: Path, tmp_path: Path) -> None:
    work, out = tmp_path / "run", tmp_path / "best" / "denoise.safetensors"
    assert train_cli(["train", "--workdir", str(work), "--task", "denoise", "--clean", str(pool),
                      *TINY_ARGS, "--max-iters", "2", "--batch-schedule", "2",
                      "--patch-schedule", "16", "--val-patch", "32", "--val-grid", "1",
                      "--no-progress", "--threads", "1"]) == 0
    assert train_cli(["train", "export", "--workdir", str(work), "--output", str(out),
                      "--best"]) == 0
    assert out.read_bytes() == (work / BEST_NAME).read_bytes()
    assert out.with_suffix(".pth").is_file()


def test_export_best_without_grid_validation_is_a_clear_error(
        pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "run"
    assert train_cli(["train", "--workdir", str(work), "--task", "denoise", "--clean", str(pool),
                      *TINY_ARGS, "--max-iters", "1", "--batch-schedule", "2",
                      "--patch-schedule", "16", "--val-grid", "0", "--no-progress",
                      "--threads", "1"]) == 0
    code = train_cli(["train", "export", "--workdir", str(work), "--output",
                      str(tmp_path / "x.safetensors"), "--best"])
    assert code != 0 and "no best weights" in capsys.readouterr().err
    code = train_cli(["train", "export", "--workdir", str(work), "--output",
                      str(tmp_path / "x.safetensors"), "--best", "--weights", "params"])
    assert code != 0


@pytest.fixture(scope="module")
def big_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pool(tmp_path_factory.mktemp("big_pool"), 72)


def test_sr_validation_scores_the_gain_over_bicubic_on_luma(big_pool: Path) -> None:
    vset = sr_validation_set(big_pool / "val", count=2, size=80, scale=4, multiple=8)
    assert vset is not None and vset.names == ("bicubic", "second-order") and vset.luma
    assert vset.clean.shape == (1, 3, 64, 64)  # 72 px photo: 64, the LR side a multiple of 8
    assert [x.shape for x in vset.degraded] == [(1, 3, 16, 16)] * 2
    assert vset.baseline is not None and vset.baseline[0].shape == vset.clean.shape
    oracle = score_grid(vset, lambda x: vset.clean.expand(len(x), -1, -1, -1))
    assert all(c.model_psnr >= 50 for c in oracle.cells) and oracle.score > 5
    torch_bicubic = score_grid(
        vset, lambda x: torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic"))
    assert abs(torch_bicubic.mean_gain) < 1.0  # another bicubic: about the baseline
    assert sr_validation_set(big_pool / "val", 2, 60) is None  # below 16 LR pixels
    cfg = _config(big_pool, arch="mambarealsr11", task="sr",
                  model=MambaRealSR11Config(dim=8, num_blocks=(1, 1, 1, 1),
                                            num_refinement_blocks=1, d_state=4).to_dict(),
                  val_patch=64)
    found = grid_validation_data(cfg)
    assert found is not None and found.names == vset.names


def test_luma_psnr_matches_the_evaluation_metric() -> None:
    from service.evaluation.metrics import compare
    from service.training.grid_validation import _mean_psnr

    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (1, 3, 24, 24), generator=gen).float() / 255
    b = ((a + 0.05 * torch.randn(a.shape, generator=gen)).clamp(0, 1) * 255).round() / 255
    expected = compare(a[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy()).psnr_y
    assert _mean_psnr(a, b, luma=True) == pytest.approx(expected, abs=1e-3)


def test_sr_training_keeps_its_best_weights_too(big_pool: Path, tmp_path: Path) -> None:
    work = tmp_path / "sr"
    assert train_cli(["train", "--workdir", str(work), "--clean", str(big_pool), "--model",
                      "vmambair-sr", "--dim", "8", "--blocks", "1,1,1,1", "--refinement-blocks",
                      "1", "--d-state", "4", "--max-iters", "2", "--batch-schedule", "2",
                      "--patch-schedule", "32", "--val-patch", "64", "--val-grid", "1",
                      "--no-progress", "--threads", "1"]) == 0
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    done = next(e for e in log if e.get("event") == "stage_done")
    assert "grid_score" in done and "grid_identity_psnr" not in done
    assert [e["step"] for e in log if e.get("event") == "best"] == [2]
    assert load_checkpoint(work / BEST_NAME).kind.scale == 4


def test_a_resume_on_another_validation_set_starts_the_best_over(pool: Path,
                                                                 tmp_path: Path) -> None:
    work = tmp_path / "run"
    first = Trainer.create(_config(pool, max_iters=(4, 1)), run_options(work, val_every=2,
                                                                        session_iters=2))
    assert first.run() == "session_iters" and first.best["step"] == 2
    same = Trainer.resume(run_options(work, val_every=2, session_iters=1))
    assert same.best == first.best
    other = Trainer.resume(run_options(work, val_every=2), {"val_patch": 24})
    assert other.best == {}
    assert other.run() == "done" and other.best["step"] == 4
