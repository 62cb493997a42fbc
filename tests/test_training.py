"""Training: losses, EMA, schedules, both stages, bit-exact resume, exports and the CLI.

Everything runs a tiny model (dim 8, blocks 1,1,1,1, d_state 4) on 16-32 px patches cut from a
few synthetic clean images written to tmp_path, so the whole file takes well under a minute.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import (
    assert_same_weights,
    fixed_batch_losses,
    make_pool,
    run_options,
    smooth_batch,
    smooth_image,
    train_cli,
)

from service.diffusion import restore
from service.models import load_model
from service.nn.diffmamba import DiffMamba, DiffMambaConfig
from service.training import (
    ModelEMA,
    TrainConfig,
    Trainer,
    WarmupCosine,
    antithetic_timesteps,
    ms_ssim,
    parse_piecewise,
    ssim,
    stage1_loss,
    stage2_loss_fn,
    value_at,
)
from service.training.ema import warmup_decay
from service.training.losses import ms_ssim_scales, restoration_loss, stage2_loss
from service.training.state import load_state, state_path

TINY = DiffMambaConfig(dim=8, num_blocks=(1, 1, 1, 1), d_state=4)
TINY_ARGS = ["--dim", "8", "--blocks", "1,1,1,1", "--d-state", "4"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pool(tmp_path_factory.mktemp("pool"), 64)


def _config(pool: Path, **changes: object) -> TrainConfig:
    base: dict[str, object] = dict(
        model=TINY.to_dict(), task="denoise", clean=str(pool), stage="1",
        max_iters=(6, 2), lr=(1e-3, 1e-4), patch_schedule=((16, 0), (24, 4)),
        batch_schedule=((2, 0),), val_count=2, val_patch=16, epoch_size=5,
    )
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


_opts, _cli, _smooth_image = run_options, train_cli, smooth_image


# ---------------------------------------------------------------- losses and helpers
def test_antithetic_timesteps_pair_up_to_T_minus_1() -> None:
    gen = torch.Generator().manual_seed(0)
    t = antithetic_timesteps(8, gen)
    assert t.shape == (8,) and t.dtype == torch.long
    assert bool(((t >= 0) & (t < 1000)).all())
    assert torch.equal(t[:4] + t[4:], torch.full((4,), 999))
    odd = antithetic_timesteps(5, gen)
    assert odd.shape == (5,) and torch.equal(odd[:2] + odd[3:], torch.full((2,), 999))


def test_ssim_and_ms_ssim_are_one_for_identical_and_fall_with_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(_smooth_image(1, 64)).permute(2, 0, 1)[None].float() / 255
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    values = []
    for sigma in (0.02, 0.1, 0.3):
        noisy = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        values.append((float(ssim(noisy, x)), float(ms_ssim(noisy, x))))
    for (s_a, m_a), (s_b, m_b) in itertools.pairwise(values):
        assert s_a > s_b and m_a > m_b


def test_ssim_matches_skimage_gaussian_window() -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(4)
    a = _smooth_image(2, 40).astype(np.float64) / 255
    b = np.clip(a + rng.normal(0, 0.08, a.shape), 0, 1)
    expected = structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=1.0, channel_axis=-1)
    ta, tb = (torch.from_numpy(v).permute(2, 0, 1)[None].float() for v in (a, b))
    assert float(ssim(ta, tb)) == pytest.approx(expected, abs=1e-3)


def test_ms_ssim_uses_fewer_scales_on_small_patches_with_finite_gradients() -> None:
    assert ms_ssim_scales(176, 176) == 5
    assert ms_ssim_scales(128, 128) == 4
    assert ms_ssim_scales(64, 64) == 3
    assert ms_ssim_scales(16, 16) == 1
    gen = torch.Generator().manual_seed(1)
    for size in (8, 32, 64):  # 8: window shrinks below 11
        x = torch.rand(2, 3, size, size, generator=gen, requires_grad=True)
        y = torch.rand(2, 3, size, size, generator=gen)
        loss = stage2_loss(x, y)
        loss.backward()
        assert torch.isfinite(loss) and x.grad is not None and bool(torch.isfinite(x.grad).all())
    with pytest.raises(ValueError, match="do not fit"):
        ms_ssim(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), scales=5)


def test_ema_update_math() -> None:
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for name, value in model.state_dict().items():
        assert torch.allclose(ema.state_dict()[name], 0.9 * start[name] + 0.1 * value)
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_forgets_the_starting_weights() -> None:
    assert warmup_decay(0.999, 10, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 10, 90) == pytest.approx(91 / 100)
    assert warmup_decay(0.999, 10, 10**6) == 0.999  # capped at the configured decay
    assert warmup_decay(0.999, 0, 0) == 0.999  # 0 = constant
    with pytest.raises(ValueError):
        warmup_decay(0.999, -1, 0)

    def after(warmup: int, updates: int) -> float:
        model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.zero_()
        ema = ModelEMA(model, decay=0.999)
        with torch.no_grad():
            model.weight.fill_(1.0)  # the trained weights; the EMA starts at the initial 0
        for step in range(updates):
            ema.update(model, warmup_decay(0.999, warmup, step))
        return float(ema.module.weight)

    assert after(10, 30) > 0.999  # the start is forgotten after a few dozen iterations
    assert after(0, 30) < 0.03  # a constant 0.999 still holds 97 % of it
    assert after(0, 3000) < 0.96  # and 5 % after 3,000


def test_states_without_the_ema_ramp_resume_with_a_constant_decay() -> None:
    base = {"model": TINY.to_dict(), "task": "denoise", "clean": "x", "stage": "1"}
    assert TrainConfig.from_dict(base).ema_warmup == 0
    assert TrainConfig.from_dict({**base, "ema_warmup": 10}).ema_warmup == 10
    assert TrainConfig(**base).ema_warmup == 10  # new runs ramp
    with pytest.raises(ValueError, match="warm-up"):
        TrainConfig(**base, ema_warmup=-1)


def test_lr_and_piecewise_schedules() -> None:
    sched = WarmupCosine(base_lr=1.0, min_lr=0.1, total=10, warmup=2)
    assert sched.lr_at(0) == pytest.approx(0.5) and sched.lr_at(1) == pytest.approx(1.0)
    assert sched.lr_at(2) == pytest.approx(1.0) and sched.lr_at(10) == pytest.approx(0.1)
    assert sched.lr_at(6) == pytest.approx(0.55)
    pieces = parse_piecewise("64:0,96:2000,128:4000")
    assert [value_at(pieces, i) for i in (0, 1999, 2000, 4000, 10**6)] == [64, 64, 96, 128, 128]
    for bad in ("64:5", "64:0,96:0", "0:0", "x:0", "64:0,,96:3"):
        with pytest.raises(ValueError):
            parse_piecewise(bad)


# ---------------------------------------------------------------- the two stages
def test_stage1_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = DiffMamba(TINY)
    clean = smooth_batch(5, 16, 4)
    degraded = (clean + 0.1 * torch.randn(clean.shape)).clamp(0, 1)
    # the same t and ε every time: one fixed batch
    losses = fixed_batch_losses(
        model, lambda: stage1_loss(model, degraded, clean, torch.Generator().manual_seed(0)),
        30, lr=3e-3)
    assert losses[-1] < 0.6 * losses[0], losses


def test_stage2_loss_decreases_on_a_fixed_batch() -> None:
    """Stage 2 fine-tunes the whole 4-step sampler: on one batch (same x_T) its loss falls."""
    torch.manual_seed(0)
    model = DiffMamba(TINY)
    clean = smooth_batch(7, 16, 2)
    degraded = (clean + 0.1 * torch.randn(clean.shape)).clamp(0, 1)
    losses = fixed_batch_losses(
        model, lambda: stage2_loss_fn(model, degraded, clean, torch.Generator().manual_seed(0),
                                      steps=4),
        15, lr=2e-3)
    assert losses[-1] < 0.8 * losses[0], losses


def test_stage2_trains_with_the_chosen_image_loss(pool: Path, tmp_path: Path) -> None:
    """--loss psnr (with a ceiling) applies to the sampler's output in stage 2; older states,
    whose "loss" was the single-pass option, resume with the release's stage-2 loss."""
    torch.manual_seed(0)
    model = DiffMamba(TINY)
    clean = smooth_batch(7, 16, 2)
    degraded = (clean + 0.1 * torch.randn(clean.shape)).clamp(0, 1)
    loss = restoration_loss("psnr", ceiling=60.0)
    losses = fixed_batch_losses(
        model, lambda: stage2_loss_fn(model, degraded, clean, torch.Generator().manual_seed(0),
                                      steps=4, loss=loss),
        15, lr=2e-3)
    assert losses[-1] < losses[0] - 2, losses  # at least 2 dB better
    assert _config(pool).loss_name == "ms-ssim-l1"
    assert _config(pool, image_loss="l1").loss_name == "l1"
    old = {**_config(pool).to_dict(), "loss": "l1"}
    del old["image_loss"]
    assert TrainConfig.from_dict(old).loss_name == "ms-ssim-l1"

    work = tmp_path / "run"
    init = tmp_path / "init.safetensors"
    assert _cli(["train", "--workdir", str(tmp_path / "s1"), "--task", "derain", "--clean",
                 str(pool), *TINY_ARGS, "--stage", "1", "--max-iters", "1", "--batch-schedule",
                 "2", "--patch-schedule", "16", "--val-grid", "0", "--no-progress", "--threads",
                 "1", "--output", str(init)]) == 0
    assert _cli(["train", "--workdir", str(work), "--task", "derain", "--clean", str(pool),
                 "--init", str(init), "--stage", "2", "--max-iters", "2", "--batch-schedule",
                 "2", "--patch-schedule", "16", "--loss", "psnr", "--psnr-ceiling", "40",
                 "--log-every", "1",
                 "--val-grid", "0", "--no-progress", "--threads", "1"]) == 0
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [e["loss"] < 0 for e in log if "loss" in e] == [True, True]  # minus dB
    from safetensors import safe_open

    with safe_open(str(work / "stage2.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert (meta["objective"], meta["psnr_ceiling"]) == ("psnr", "40.0")
    with safe_open(str(init), framework="pt") as f:
        assert f.metadata()["objective"] == "noise-l1"


def test_stage2_backpropagates_through_every_sampler_step() -> None:
    torch.manual_seed(0)
    model = DiffMamba(TINY)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(o.requires_grad))
    gen = torch.Generator().manual_seed(1)
    clean = torch.rand(2, 3, 16, 16, generator=gen)
    degraded = torch.rand(2, 3, 16, 16, generator=gen)
    x_T = torch.randn(2, 3, 16, 16, generator=gen, requires_grad=True)
    loss = stage2_loss(restore(model, degraded, steps=4, x_T=x_T), clean)
    loss.backward()
    assert calls == [True] * 4
    # x_T enters only the first step, so its gradient crossed all four.
    assert x_T.grad is not None and bool(torch.isfinite(x_T.grad).all())
    assert float(x_T.grad.abs().sum()) > 0
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_resume_is_bit_for_bit(pool: Path, tmp_path: Path) -> None:
    cfg = _config(pool, stage="both", max_iters=(4, 2))
    straight = Trainer.create(cfg, _opts(tmp_path / "a"))
    assert straight.run() == "done"

    first = Trainer.create(cfg, _opts(tmp_path / "b", session_iters=3))
    assert first.run() == "session_iters"  # stopped mid stage 1 (after the patch change at 2)
    second = Trainer.resume(_opts(tmp_path / "b", session_iters=2))
    assert second.run() == "session_iters"  # crossed into stage 2, stopped inside it
    assert load_state(state_path(tmp_path / "b"))["stage"] == 2
    third = Trainer.resume(_opts(tmp_path / "b"))
    assert third.run() == "done"

    resumed = first.history + second.history + third.history
    assert [(r.stage, r.step) for r in resumed] == [(r.stage, r.step) for r in straight.history]
    assert [r.loss for r in resumed] == [r.loss for r in straight.history]
    assert_same_weights(straight, third)


def test_time_limit_saves_and_exits(pool: Path, tmp_path: Path) -> None:
    trainer = Trainer.create(_config(pool), _opts(tmp_path, time_limit_s=0.0))
    assert trainer.run() == "time_limit"
    state = load_state(state_path(tmp_path))
    assert state["stage"] == 1 and state["step"] == 0
    assert {"model", "ema", "optimizer", "scheduler", "noise_rng", "rng", "data"} <= set(state)
    assert Trainer.resume(_opts(tmp_path)).step == 0


# ---------------------------------------------------------------- CLI and exports
def test_cli_trains_validates_and_exports(pool: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    code = _cli(["train", "--workdir", str(work), "--task", "denoise", "--clean", str(pool),
                 *TINY_ARGS, "--stage", "1", "--max-iters", "2", "--batch-schedule", "2",
                 "--patch-schedule", "16", "--val-count", "2", "--val-patch", "16",
                 "--val-every", "1", "--log-every", "1", "--no-progress", "--threads", "1",
                 "--output", str(tmp_path / "models" / "denoise.safetensors")])
    assert code == 0
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    train_lines = [e for e in log if "loss" in e]
    assert [e["step"] for e in train_lines] == [1, 2]
    assert all({"stage", "lr", "it_s", "time"} <= set(e) for e in train_lines)
    assert any("val_psnr" in e and np.isfinite(e["val_psnr"]) for e in log)

    loaded = load_model(tmp_path / "models" / "denoise.safetensors")
    assert isinstance(loaded, DiffMamba) and loaded.config.layer_norm_type == "BiasFree"
    bundle = torch.load(tmp_path / "models" / "denoise.pth", weights_only=True)
    assert set(bundle) == {"params", "params_ema"}
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, bundle["params_ema"][name])
    from service.models import load_checkpoint

    meta_model = load_checkpoint(work / "stage1.safetensors")
    assert meta_model.config.d_state == 4

    out = tmp_path / "exported.safetensors"
    assert _cli(["train", "export", "--workdir", str(work), "--output", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".pth").is_file()
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["task"] == "denoise" and meta["stage"] == "1" and meta["iterations"] == "2"
    assert meta["weights"] == "ema"
    # --weights params serves the live weights (safetensors, and params_ema in the .pth)
    live = tmp_path / "live.safetensors"
    assert _cli(["train", "export", "--workdir", str(work), "--output", str(live),
                 "--weights", "params"]) == 0
    state = load_state(state_path(work))
    served = load_model(live).state_dict()
    assert all(torch.equal(served[k], v) for k, v in state["model"].items())
    assert any(not torch.equal(served[k], v) for k, v in state["ema"].items())
    bundle = torch.load(live.with_suffix(".pth"), weights_only=True)
    assert all(torch.equal(bundle["params_ema"][k], v) for k, v in state["model"].items())
    with safe_open(str(live), framework="pt") as f:
        assert f.metadata()["weights"] == "params"

    # the same command again is refused without --resume; with it, nothing is left to do
    assert _cli(["train", "--workdir", str(work), "--task", "denoise", "--clean", str(pool)]) == 2
    assert _cli(["train", "--workdir", str(work), "--resume", "--no-progress", "--threads", "1",
                 *TINY_ARGS]) == 0
    # going on to stage 2 later, with its own learning rate, from stage 1's EMA weights
    assert _cli(["train", "--workdir", str(work), "--resume", "--no-progress", "--stage", "2",
                 "--threads", "1", "--lr", "2e-4", "--max-iters", "1", "--val-count", "1"]) == 0
    state = load_state(state_path(work))
    assert state["done"] == [1, 2] and state["config"]["lr"][1] == 2e-4
    assert (work / "stage2.safetensors").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "derain"], "no training data"),
        (["--task", "derain", "--clean", "/nonexistent/pool"], "no such file"),
        (["--clean", "POOL", "--task", "derain", "--lr", "1e-4"], "two values"),
        (["--clean", "POOL", "--task", "derain", "--max-iters", "1,2,3"], "one value or two"),
        (["--clean", "POOL", "--task", "derain", "--stage", "2"], "--init"),
        (["--resume"], "no state.pt"),
        (["--clean", "POOL", "--pairs", "POOL", "--task", "derain"], "not both"),
        (["--pairs", "POOL", "--min-detail", "0.01"], "not to real pairs"),
    ],
)
def test_cli_rejects_bad_arguments(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    argv = [str(pool) if a == "POOL" else a for a in argv]
    code = _cli(["train", "--workdir", str(tmp_path / "w"), "--no-progress", *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("diffmamba: error:") and message in err


@pytest.mark.parametrize(
    "argv",
    [["--blocks", "1,1,1"], ["--patch-schedule", "64:10"], ["--dim", "0"], ["--task", "dehaze"],
     ["--min-detail", "1"], ["--min-detail", "x"]],
)
def test_cli_argparse_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _cli(["train", "--workdir", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_resume_refuses_changes_that_break_continuity(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Trainer.create(_config(pool), _opts(tmp_path, session_iters=1)).run()  # stage 1 started
    for argv, what in ((["--dim", "16"], "model"), (["--lr", "5e-4"], "lr of stage 1"),
                       (["--patch-schedule", "24"], "patch_schedule"),
                       (["--min-detail", "0.01"], "min_detail")):
        code = _cli(["train", "--workdir", str(tmp_path), "--resume", "--no-progress", *argv])
        assert code == 2
        err = capsys.readouterr().err
        assert "cannot change on --resume" in err and what in err


def test_stage1_can_fine_tune_from_a_checkpoint(pool: Path, tmp_path: Path) -> None:
    """--init in stage 1 starts from the given weights (here the authors' tiny fixture) with
    their config, rather than from a random init of the command line's sizes."""
    fixture = Path(__file__).parent / "fixtures" / "diffmamba" / "tiny_biasfree_checkpoint.pth"
    start = load_model(fixture)
    trainer = Trainer.create(_config(pool, init=str(fixture), max_iters=(1, 1)),
                             _opts(tmp_path / "run"))
    assert trainer.cfg.model == start.config.to_dict()
    for name, value in start.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    assert trainer.run() == "done"
    assert any(not torch.equal(trainer.model.state_dict()[k], v)
               for k, v in start.state_dict().items())
