"""bf16 on the CPU: chosen only with native support, the scan kept in fp32, output within 45 dB.

The machine running the tests may or may not have native bf16 (amx_bf16 / avx512_bf16): the
capability is forced on or off here, so every path runs everywhere. Forced on, a CPU without it
emulates bf16 -- slower, but the numbers are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from training_helpers import make_pool, one_thread, run_options

from service.engines import EngineOptions, TorchEngine, build_engine, psnr_db
from service.engines import precision as precision_mod
from service.engines.warmup import warmup_inputs
from service.models import load_checkpoint
from service.scan import dispatch
from service.training import TrainConfig, Trainer

FIXTURES = Path(__file__).parent / "fixtures"
REPO_MODELS = Path(__file__).parent.parent / "models"
CHECKPOINTS = [
    FIXTURES / "diffmamba" / "tiny_withbias_checkpoint.pth",
    FIXTURES / "diffmamba" / "tiny_biasfree_checkpoint.pth",
    FIXTURES / "vmambair" / "tiny_checkpoint.pth",
    REPO_MODELS / "denoise.safetensors",
]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _force_bf16(monkeypatch: pytest.MonkeyPatch, available: bool) -> None:
    monkeypatch.setattr(precision_mod, "cpu_has_bf16", lambda: available)


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu sse avx2 amx_bf16 amx_tile", True), ("fpu avx512f avx512_bf16", True),
    ("fpu sse avx avx2 fma", False)])
def test_cpu_flags(tmp_path: Path, flags: str, expected: bool) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert precision_mod.cpu_has_bf16(info) is expected
    assert precision_mod.cpu_has_bf16(tmp_path / "missing") is False


def test_resolution_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    _force_bf16(monkeypatch, False)
    assert precision_mod.resolve_precision("auto", CPU)[0] == "fp32"
    chosen, why = precision_mod.resolve_precision("bf16", CPU)
    assert chosen == "fp32" and "no native bf16" in str(why)
    assert precision_mod.resolve_precision("fp16", CPU)[0] == "fp32"
    assert precision_mod.resolve_precision("fp32", CPU) == ("fp32", None)
    _force_bf16(monkeypatch, True)
    assert precision_mod.resolve_precision("auto", CPU) == ("bf16", None)
    assert precision_mod.resolve_precision("bf16", CPU) == ("bf16", None)
    with pytest.raises(ValueError, match="precision must be one of"):
        precision_mod.resolve_precision("int8", CPU)


@pytest.mark.parametrize("requested", ["auto", "bf16", "fp16"])
def test_without_native_bf16_the_engine_runs_fp32(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, requested: str
) -> None:
    _force_bf16(monkeypatch, False)
    loaded = load_checkpoint(CHECKPOINTS[0])
    with caplog.at_level(logging.INFO, logger="service.engines"):
        engine = build_engine(loaded, CPU, EngineOptions(precision=requested, tile=16),
                              CHECKPOINTS[0])
    assert isinstance(engine, TorchEngine) and engine.precision == "fp32"
    if requested != "auto":
        assert "running fp32" in caplog.text


def test_with_native_bf16_auto_picks_bf16_after_the_check(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _force_bf16(monkeypatch, True)
    loaded = load_checkpoint(CHECKPOINTS[0])
    with caplog.at_level(logging.INFO, logger="service.engines"):
        engine = build_engine(loaded, CPU, EngineOptions(precision="auto", tile=16),
                              CHECKPOINTS[0])
    assert engine.describe()["precision"] == "bf16"
    assert "dB PSNR against fp32" in caplog.text and "using bf16" in caplog.text


def test_a_failing_check_falls_back(monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    _force_bf16(monkeypatch, True)
    monkeypatch.setattr("service.engines.factory.decide_precision",
                        lambda req, ref, cand: precision_mod.decide_precision(
                            req, ref, cand, min_psnr_db=1000.0))
    loaded = load_checkpoint(CHECKPOINTS[0])
    with caplog.at_level(logging.WARNING, logger="service.engines"):
        engine = build_engine(loaded, CPU, EngineOptions(precision="auto", tile=16),
                              CHECKPOINTS[0])
    assert engine.describe()["precision"] == "fp32"
    assert "falling back to fp32" in caplog.text


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_bf16_output_within_45_db_of_fp32(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint)
    x, t = warmup_inputs(loaded.kind, 32)
    fp32 = TorchEngine(loaded.model, loaded.kind, CPU).run(x, t)
    bf16 = TorchEngine(loaded.model, loaded.kind, CPU, "bf16").run(x, t)
    assert psnr_db(fp32, bf16) >= 45.0
    assert torch.equal(TorchEngine(loaded.model, loaded.kind, CPU).run(x, t), fp32)


@pytest.mark.parametrize("checkpoint", [CHECKPOINTS[0], CHECKPOINTS[2]],
                         ids=["diffmamba", "vmambair"])
def test_the_scan_receives_fp32_under_bf16(monkeypatch: pytest.MonkeyPatch,
                                           checkpoint: Path) -> None:
    seen: list[torch.dtype] = []
    original = dispatch._implementation

    def recording(name: str):  # type: ignore[no-untyped-def]
        fn = original(name)

        def scan(u, delta, A, B, C, *rest):  # type: ignore[no-untyped-def]
            seen.extend(t.dtype for t in (u, delta, A, B, C))
            return fn(u, delta, A, B, C, *rest)

        return scan

    import service.scan.cross as cross

    fused = cross.cross_selective_scan

    def recording_fused(x, *params):  # type: ignore[no-untyped-def]
        seen.extend([x.dtype, *(p.dtype for p in params)])
        return fused(x, *params)

    monkeypatch.setattr(dispatch, "_implementation", recording)
    monkeypatch.setattr(cross, "cross_selective_scan", recording_fused)
    loaded = load_checkpoint(checkpoint)
    x, t = warmup_inputs(loaded.kind, 16)
    TorchEngine(loaded.model, loaded.kind, CPU, "bf16").run(x, t)
    assert seen and set(seen) == {torch.float32}


def test_two_bf16_training_steps_lower_the_loss(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """A tiny stage-1 run in bf16 on one repeated batch: the loss goes down."""
    (tmp_path / "pool").mkdir()
    pool = make_pool(tmp_path / "pool", 48)
    cfg = TrainConfig(model={"dim": 8, "num_blocks": [1, 1, 1, 1], "d_state": 4},
                      task="denoise", clean=str(pool), stage="1", max_iters=(40, 1),
                      lr=(3e-3, 1e-5), min_lr=(3e-3, 1e-7), patch_schedule=((16, 0),),
                      batch_schedule=((4, 0),), val_count=0, epoch_size=4)
    trainer = Trainer.create(cfg, run_options(tmp_path / "run", precision="bf16"))
    assert trainer.opts.precision == "bf16"
    losses = [trainer.train_step().loss for _ in range(24)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses
