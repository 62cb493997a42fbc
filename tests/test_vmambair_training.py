"""VmambaIR training: one stage of L1 regression through the shared trainer, resumable, CLI.

A tiny model (dim 8, blocks 1,1,1,1, one refinement block, d_state 4) on 16 px patches of a few
synthetic clean images: the whole file takes seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from training_helpers import TINY_VMAMBAIR as TINY
from training_helpers import TINY_VMAMBAIR_ARGS as TINY_ARGS
from training_helpers import (
    assert_same_weights,
    fixed_batch_losses,
    make_pool,
    run_options,
    smooth_batch,
    train_cli,
)

from service.cli import train_cmd
from service.models import load_checkpoint
from service.nn.vmambair import VmambaIR, VmambaIRConfig
from service.training import TrainConfig, Trainer, single_pass_loss
from service.training.state import load_state, state_path

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pool(tmp_path_factory.mktemp("pool"), 48)


def _config(pool: Path, **changes: object) -> TrainConfig:
    base: dict[str, object] = dict(
        model=TINY.to_dict(), arch="vmambair", task="derain", clean=str(pool), stage="1",
        max_iters=(5, 1), lr=(1e-3, 1e-4), patch_schedule=((16, 0), (24, 3)),
        batch_schedule=((2, 0),), val_count=2, val_patch=16, epoch_size=5,
    )
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


_opts, _cli = run_options, train_cli


def _fit_tiny(loss_name: str, iterations: int = 15) -> list[float]:
    """The loss of a tiny model fitted to one noisy pair, per iteration."""
    torch.manual_seed(0)
    model = VmambaIR(TINY)
    clean = smooth_batch(5, 16, 2)
    degraded = (clean + 0.1 * torch.randn(clean.shape)).clamp(0, 1)
    return fixed_batch_losses(model, lambda: single_pass_loss(model, degraded, clean, loss_name),
                              iterations, lr=2e-3)


def test_a_few_iterations_lower_the_l1_loss() -> None:
    losses = _fit_tiny("l1")
    assert losses[-1] < 0.6 * losses[0], losses


def test_single_pass_config_is_one_stage(pool: Path) -> None:
    cfg = _config(pool)
    assert cfg.single_pass and cfg.stages == (1,)
    with pytest.raises(ValueError, match="one stage"):
        _config(pool, stage="both")
    with pytest.raises(ValueError, match="unknown model"):
        _config(pool, arch="unet")


def test_resume_is_bit_for_bit(pool: Path, tmp_path: Path) -> None:
    cfg = _config(pool)
    straight = Trainer.create(cfg, _opts(tmp_path / "a"))
    assert straight.run() == "done"
    first = Trainer.create(cfg, _opts(tmp_path / "b", session_iters=2))
    assert first.run() == "session_iters"
    second = Trainer.resume(_opts(tmp_path / "b", session_iters=2))
    assert second.run() == "session_iters"  # crossed the patch change at iteration 3
    third = Trainer.resume(_opts(tmp_path / "b"))
    assert third.run() == "done"
    resumed = first.history + second.history + third.history
    assert [r.loss for r in resumed] == [r.loss for r in straight.history]
    assert_same_weights(straight, third)


def test_cli_trains_validates_and_exports_a_servable_model(pool: Path, tmp_path: Path) -> None:
    work, output = tmp_path / "run", tmp_path / "models" / "derain.safetensors"
    code = _cli(["train", "--workdir", str(work), "--task", "derain", "--clean", str(pool),
                 *TINY_ARGS, "--max-iters", "2", "--batch-schedule", "2", "--patch-schedule",
                 "16", "--val-count", "2", "--val-patch", "16", "--val-every", "1",
                 "--log-every", "1", "--no-progress", "--threads", "1", "--output", str(output)])
    assert code == 0
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2]
    assert any("val_psnr" in e and np.isfinite(e["val_psnr"]) for e in log)
    loaded = load_checkpoint(output)
    assert (loaded.arch, loaded.kind) == ("vmambair", "single_pass")
    assert loaded.config == TINY
    state = load_state(state_path(work))
    assert state["config"]["arch"] == "vmambair" and state["done"] == [1]
    # the .pth beside it is the release's format: detected from its keys alone
    assert load_checkpoint(output.with_suffix(".pth")).config == TINY


def test_cli_defaults_to_the_release_recipe(pool: Path, tmp_path: Path) -> None:
    """One stage, L1, AdamW at 3e-4 cosine to 1e-6, patches growing 128 -> 384 (batch 8 -> 1)."""
    parser = argparse.ArgumentParser(prog="diffmamba")
    train_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "--workdir", str(tmp_path), "--model", "vmambair",
                              "--task", "derain", "--clean", str(pool)])
    cfg = train_cmd._fresh_config(args)
    assert cfg.arch == "vmambair" and cfg.stage == "1" and cfg.stages == (1,)
    assert cfg.model == VmambaIRConfig().to_dict()
    assert cfg.lr[0] == 3e-4 and cfg.min_lr[0] == 1e-6 and cfg.max_iters[0] == 300_000
    assert cfg.patch_schedule[0] == (128, 0) and cfg.patch_schedule[-1] == (384, 276_000)
    assert cfg.batch_schedule[0] == (8, 0) and cfg.batch_schedule[-1] == (1, 240_000)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*TINY_ARGS, "--stage", "2"], "one stage"),
        ([*TINY_ARGS, "--stage", "both"], "one stage"),
        (["--refinement-blocks", "1"], "vmambair only"),
    ],
)
def test_cli_rejects_options_that_do_not_apply(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    code = _cli(["train", "--workdir", str(tmp_path / "w"), "--task", "derain", "--clean",
                 str(pool), "--no-progress", "--threads", "1", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_resume_refuses_another_model(pool: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    Trainer.create(_config(pool), _opts(tmp_path, session_iters=1)).run()
    code = _cli(["train", "--workdir", str(tmp_path), "--resume", "--no-progress", "--threads",
                 "1", "--model", "diffmamba"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot change on --resume" in err and "arch" in err


def test_psnr_loss_is_minus_the_mean_psnr_of_the_images() -> None:
    from service.training.losses import psnr_loss
    from service.training.metrics import psnr

    clean = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    noisy = clean + torch.tensor([0.01, 0.05, 0.2]).view(3, 1, 1, 1) * torch.randn(clean.shape)
    assert float(psnr_loss(noisy, clean)) == pytest.approx(-float(psnr(noisy, clean).mean()),
                                                           abs=1e-3)
    # an image 10x closer counts 20 dB, however small its error already was
    assert float(psnr_loss(clean + 0.001, clean) - psnr_loss(clean + 0.01, clean)) == \
        pytest.approx(-20.0, abs=0.1)


def test_psnr_ceiling_ignores_images_restored_above_it(pool: Path, tmp_path: Path) -> None:
    from service.training.losses import psnr_loss

    clean = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # image 0 at 40 dB (rms error 0.01), image 1 at 20 dB (0.1)
    error = torch.tensor([0.01, 0.1]).view(2, 1, 1, 1) * torch.ones_like(clean)
    restored = (clean + error).requires_grad_(True)
    assert float(psnr_loss(restored, clean, ceiling=30.0)) == pytest.approx(-(30 + 20) / 2,
                                                                            abs=1e-3)
    psnr_loss(restored, clean, ceiling=30.0).backward()
    assert restored.grad is not None
    assert float(restored.grad[0].abs().max()) == 0.0 and float(restored.grad[1].abs().max()) > 0
    # below the ceiling nothing changes
    assert float(psnr_loss(restored, clean, ceiling=50.0)) == pytest.approx(
        float(psnr_loss(restored, clean)), abs=1e-6)
    with pytest.raises(ValueError, match="PSNR ceiling"):
        _config(pool, psnr_ceiling=40.0)  # the loss is L1
    with pytest.raises(ValueError, match="PSNR ceiling"):
        _config(pool, image_loss="psnr", psnr_ceiling=-1.0)
    work = tmp_path / "run"
    assert _cli(["train", "--workdir", str(work), "--task", "derain", "--clean", str(pool),
                 *TINY_ARGS, "--max-iters", "2", "--batch-schedule", "2", "--patch-schedule",
                 "16", "--loss", "psnr", "--psnr-ceiling", "45", "--val-grid", "0",
                 "--no-progress", "--threads", "1"]) == 0
    assert load_state(state_path(work))["config"]["psnr_ceiling"] == 45.0
    with safe_open(str(work / "stage1.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["objective"], meta["psnr_ceiling"]) == ("psnr", "45.0")


def test_psnr_loss_trains_and_is_a_single_pass_option(pool: Path, tmp_path: Path) -> None:
    losses = _fit_tiny("psnr")
    assert losses[-1] < losses[0] - 3, losses  # at least 3 dB better
    with pytest.raises(ValueError, match="loss must be one of l1, psnr, ms-ssim-l1"):
        _config(pool, image_loss="ssim")
    work = tmp_path / "run"
    assert _cli(["train", "--workdir", str(work), "--task", "derain", "--clean", str(pool),
                 *TINY_ARGS, "--max-iters", "2", "--batch-schedule", "2", "--patch-schedule",
                 "16", "--loss", "psnr", "--val-grid", "0", "--no-progress", "--threads",
                 "1"]) == 0
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert all(e["loss"] < 0 for e in log if "loss" in e)  # minus dB
    assert load_state(state_path(work))["config"]["image_loss"] == "psnr"
    assert _cli(["train", "--workdir", str(tmp_path / "bad"), "--task", "derain", "--clean",
                 str(pool), *TINY_ARGS, "--loss", "ssim", "--no-progress"]) != 0


def test_degradation_variant_trains_and_is_recorded(pool: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variants: none"):
        _config(pool, degradation="mild")  # derain has no variant
    work = tmp_path / "run"
    assert _cli(["train", "--workdir", str(work), "--task", "deblur", "--clean", str(pool),
                 *TINY_ARGS, "--max-iters", "2", "--batch-schedule", "2", "--patch-schedule",
                 "16", "--degradation", "mild", "--val-grid", "0", "--no-progress",
                 "--threads", "1"]) == 0
    assert load_state(state_path(work))["config"]["degradation"] == "mild"
    with safe_open(str(work / "stage1.safetensors"), "pt") as f:
        assert f.metadata()["degradation"] == "mild"
    assert _cli(["train", "--workdir", str(tmp_path / "bad"), "--task", "deblur", "--clean",
                 str(pool), *TINY_ARGS, "--degradation", "strong", "--no-progress"]) == 2
