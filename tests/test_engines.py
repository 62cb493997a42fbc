"""Engines for the network pass: export, ONNX Runtime parity, the engine cache, the service
with an ONNX Runtime engine, the precision check, and the `diffmamba export` command."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from serving import make_models_dir, png_bytes, random_image, started_client, wait_ready

from service.cli import main
from service.engines import EngineOptions, TorchEngine, build_engine, decide_precision, psnr_db
from service.engines.cache import EngineCache, default_path, expected_metadata
from service.engines.cuda_graphs import capture_sizes
from service.engines.onnx_export import read_onnx_metadata
from service.engines.warmup import warmup_inputs
from service.models import load_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FIXTURE = Path(__file__).parent / "fixtures" / "diffmamba" / "tiny_withbias_checkpoint.pth"
TILE = 16
CUDA = torch.cuda.is_available()


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return CUDA


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture checkpoint exported by the CLI (tile 16), once for the module."""
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    assert main(["export", "--checkpoint", str(FIXTURE), "--tile", str(TILE), "--max-batch",
                 "4", "--output", str(out), "--opset", "17"]) == 0
    return out


@pytest.fixture(scope="module")
def loaded():  # type: ignore[no-untyped-def]
    return load_checkpoint(FIXTURE)


def test_export_passes_checker_and_records_metadata(exported: Path, loaded) -> None:  # type: ignore[no-untyped-def]
    onnx.checker.check_model(str(exported))
    meta = read_onnx_metadata(exported)
    assert meta["opset"] == "17" and meta["tile"] == str(TILE) and meta["max_batch"] == "4"
    assert meta["checkpoint_sha256"] == loaded.sha256 and meta["engine_version"]
    graph = onnx.load(str(exported)).graph
    assert [i.name for i in graph.input] == ["x", "t"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [6, TILE, TILE]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_torch(exported: Path, loaded, batch: int) -> None:  # type: ignore[no-untyped-def]
    from service.engines.ort_engine import OnnxRuntimeEngine

    eager = TorchEngine(loaded.model, loaded.kind, torch.device("cpu"))
    # max_batch 2: a batch of 3 runs as chunks of 2 and 1.
    engine = OnnxRuntimeEngine(exported, loaded.kind, TILE, 2, eager)
    x = torch.randn(batch, 6, TILE, TILE, generator=torch.Generator().manual_seed(batch))
    for step in (900.0, 37.0):
        t = torch.full((batch,), step)
        got, want = engine.run(x, t), eager.run(x, t)
        assert got.shape == want.shape == (batch, 3, TILE, TILE)
        assert float((got - want).abs().max()) < 1e-3
    assert engine.stats["fallback_batches"] == 0
    small = torch.randn(1, 6, 8, 8)  # not the tile shape: the eager fallback, exactly
    five = torch.tensor([5.0])
    assert torch.equal(engine.run(small, five), eager.run(small, five))
    assert engine.stats["fallback_batches"] == 1


def test_service_with_onnxruntime_returns_the_torch_image(tmp_path: Path) -> None:
    models = make_models_dir(tmp_path)
    settings = {"tile_size": 32, "tile_overlap": 8, "max_batch": 4}
    images = [png_bytes(random_image(40, 56, seed=1)), png_bytes(random_image(20, 18, seed=2))]

    def restore_all(**overrides: object) -> tuple[list[np.ndarray], dict]:
        outs = []
        with started_client(models, **settings, **overrides) as client:
            wait_ready(client)
            for data in images:
                r = client.post("/restore", params={"task": "derain", "seed": 3, "steps": 2},
                                content=data, headers={"Content-Type": "image/png"})
                assert r.status_code == 200, r.text
                outs.append(np.asarray(Image.open(io.BytesIO(r.content)), dtype=np.int16))
            tasks = {t["task"]: t for t in client.get("/v1/tasks").json()["tasks"]}
        return outs, tasks

    torch_out, _ = restore_all()
    ort_out, tasks = restore_all(task_engines={"derain": "onnxruntime"})
    assert tasks["derain"]["engine"]["name"] == "onnxruntime"
    assert tasks["denoise"]["engine"]["name"] == "torch"  # the per-task override only
    assert tasks["derain"]["engine"]["static_batches"] > 0  # the 40x56 image's full tiles
    assert tasks["derain"]["engine"]["fallback_batches"] > 0  # the 20x18 image (24x24 padded)
    assert default_path(models / "derain.pth", 32, 4, ".onnx").is_file()
    for a, b in zip(torch_out, ort_out, strict=True):
        assert a.shape == b.shape and int(np.abs(a - b).max()) <= 1


def _cached_engine(loaded, models: Path, caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    options = EngineOptions(engine="onnxruntime", tile=TILE, max_batch=2)
    with caplog.at_level(logging.INFO, logger="service.engines"):
        return build_engine(loaded, torch.device("cpu"), options, models / "derain.pth")


def _assert_rebuilt_and_correct(engine, loaded, path: Path) -> None:  # type: ignore[no-untyped-def]
    assert engine.path == path and read_onnx_metadata(path)["checkpoint_sha256"] == loaded.sha256
    x, t = warmup_inputs(loaded.kind, TILE, batch=2)
    eager = TorchEngine(loaded.model, loaded.kind, torch.device("cpu"))
    assert float((engine.run(x, t) - eager.run(x, t)).abs().max()) < 1e-3


def _identity_onnx(path: Path, metadata: dict[str, str]) -> None:
    """A valid ONNX file that is not our network, with the given metadata."""
    helper = onnx.helper
    node = helper.make_node("Identity", ["x"], ["out"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1])],
                              [helper.make_tensor_value_info("out", 1, [1])])
    model = helper.make_model(graph)
    helper.set_model_props(model, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_stale_cache_other_checkpoint_is_rebuilt(tmp_path: Path, loaded,  # type: ignore[no-untyped-def]
                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = default_path(tmp_path / "derain.pth", TILE, 2, ".onnx")
    _identity_onnx(path, expected_metadata("0" * 64, TILE, 2, {"kind": "diffusion"}))
    engine = _cached_engine(loaded, tmp_path, caplog)
    assert "is stale (checkpoint_sha256" in caplog.text
    _assert_rebuilt_and_correct(engine, loaded, path)
    caplog.clear()  # a second start-up reuses the rebuilt file
    assert _cached_engine(loaded, tmp_path, caplog).path == path
    assert "using cached engine" in caplog.text and "building" not in caplog.text


def test_corrupt_cache_logs_an_error_and_is_rebuilt(tmp_path: Path, loaded,  # type: ignore[no-untyped-def]
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = default_path(tmp_path / "derain.pth", TILE, 2, ".onnx")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x08\x07 this is not a protobuf \xff\xff\xff")
    engine = _cached_engine(loaded, tmp_path, caplog)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "corrupt or unreadable" in errors[0].getMessage()
    _assert_rebuilt_and_correct(engine, loaded, path)


def test_cache_falls_back_when_the_models_dir_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    models, user = tmp_path / "models", tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(user))
    import service.engines.cache as cache_mod

    real = cache_mod.writable
    monkeypatch.setattr(cache_mod, "writable", lambda d: not d.is_relative_to(models) and real(d))
    cache = EngineCache(models / "denoise.pth", 32, 8, ".onnx")
    meta = {"checkpoint_sha256": "a" * 64}

    def build(p: Path) -> Path:
        p.write_text("a" * 64)
        return p

    def read(p: Path) -> dict[str, str]:
        return {"checkpoint_sha256": p.read_text()}

    with caplog.at_level(logging.WARNING, logger="service.engines"):
        path = cache.get_or_build(read, meta, build, "task denoise")
    assert path == user / "diffmamba" / "engines" / "denoise-t32-b8.onnx" and path.is_file()
    assert "not writable" in caplog.text
    # A valid file shipped next to the checkpoint (read-only) is preferred and not rebuilt.
    shipped = default_path(models / "denoise.pth", 32, 8, ".onnx")
    shipped.parent.mkdir(parents=True)
    build(shipped)
    assert cache.get_or_build(read, meta, lambda p: pytest.fail("rebuilt"), "t") == shipped
    configured = EngineCache(models / "denoise.pth", 32, 8, ".onnx", configured_dir=tmp_path / "c")
    assert configured.get_or_build(read, {"checkpoint_sha256": "b" * 64}, build, "t").parent == (
        tmp_path / "c")


def _exit_code(argv: list[str]) -> int:
    """What the `diffmamba` process would exit with (argparse errors raise SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tile", "30"], "multiple of 8"),
        (["--tile", "0"], "must be >= 1"),
        (["--max-batch", "-1"], "must be >= 1"),
        (["--opset", "99"], "must be 14..20"),
        (["--format", "pdf"], "invalid choice"),
        (["--fp16"], "--fp16 applies to --format tensorrt only"),
        (["--output", "model.bin"], "must end in .onnx"),
        (["--checkpoint", "missing.pth"], "checkpoint not found"),
    ],
)
def test_export_bad_arguments_exit_2(args: list[str], message: str,
                                     capsys: pytest.CaptureFixture) -> None:
    argv = ["export", *(["--checkpoint", str(FIXTURE)] if "--checkpoint" not in args else [])]
    assert _exit_code(argv + args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is available here")
def test_export_tensorrt_without_it_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    code = main(["export", "--checkpoint", str(FIXTURE), "--tile", "16", "--format", "tensorrt",
                 "--output", "never.plan"])
    assert code == 1
    assert "cannot build a TensorRT engine here" in capsys.readouterr().err
    assert not Path("never.plan").exists()


def test_engine_tensorrt_on_cpu_fails_start_up_clearly(loaded) -> None:  # type: ignore[no-untyped-def]
    from service.engines import EngineUnavailable

    with pytest.raises(EngineUnavailable, match="needs a CUDA device"):
        build_engine(loaded, torch.device("cpu"), EngineOptions(engine="tensorrt", tile=TILE),
                     FIXTURE)


def test_task_engine_override_from_settings() -> None:
    from service.settings import Settings

    s = Settings(engine="compile", task_engines={"denoise": "onnxruntime"}, tile_size=64,
                 precision="auto", task_precisions={"denoise": "fp32"})
    assert EngineOptions.for_task(s, "denoise").engine == "onnxruntime"
    assert EngineOptions.for_task(s, "denoise").precision == "fp32"
    assert EngineOptions.for_task(s, "derain") == EngineOptions(engine="compile", tile=64,
                                                                max_batch=2)  # the CPU default
    assert EngineOptions.for_task(s, "derain").precision == "auto"
    with pytest.raises(ValueError, match="onnx"):
        Settings(task_engines={"denoise": "onnx"})


# ---------------------------------------------------------------- precision check (plain, CPU)


def test_psnr_and_precision_decision() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 3, 32, 32, generator=g)
    span = float(ref.max() - ref.min())
    assert psnr_db(ref, ref) == math.inf
    noisy = ref + 1e-3 * span * torch.randn(ref.shape, generator=g)
    assert psnr_db(ref, noisy) == pytest.approx(60.0, abs=0.5)
    assert psnr_db(ref, ref + 0.5) == pytest.approx(10 * math.log10(span**2 / 0.25))
    assert psnr_db(ref, torch.full_like(ref, math.nan)) == -math.inf

    kept = decide_precision("bf16", ref, noisy)
    assert kept.chosen == "bf16" and not kept.fell_back and "using bf16" in kept.log_line()
    worse = ref + 1e-2 * span * torch.randn(ref.shape, generator=g)  # ~40 dB
    dropped = decide_precision("fp16", ref, worse)
    assert dropped.chosen == "fp32" and dropped.fell_back
    assert "(below 45 dB), falling back to fp32" in dropped.log_line()
    assert decide_precision("fp32", None, None).psnr_db is None
    with pytest.raises(ValueError):
        decide_precision("int8", ref, ref)


def test_capture_sizes_cover_every_batch() -> None:
    assert capture_sizes(1) == [1]
    assert capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(6) == [1, 2, 4, 6]


def test_fp16_on_cpu_runs_fp32(loaded, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    options = EngineOptions(engine="torch", precision="fp16", tile=TILE)
    with caplog.at_level(logging.WARNING, logger="service.engines"):
        engine = build_engine(loaded, torch.device("cpu"), options, FIXTURE)
    assert isinstance(engine, TorchEngine) and engine.precision == "fp32"
    assert "applies on CUDA only" in caplog.text


# ---------------------------------------------------------------- GPU only


@pytest.mark.skipif(not CUDA, reason="CUDA graphs and autocast need a CUDA GPU")
def test_cuda_graphs_and_bf16_match_eager() -> None:
    loaded = load_checkpoint(FIXTURE, device="cuda")
    device = torch.device("cuda")
    eager = TorchEngine(loaded.model, loaded.kind, device)
    graphs = build_engine(loaded, device, EngineOptions(tile=TILE, max_batch=4), FIXTURE)
    graphs.warm_up()
    x = torch.randn(3, 6, TILE, TILE)
    t = torch.tensor([10.0, 500.0, 990.0])
    assert graphs.describe()["captured_batch_sizes"] == [1, 2, 4]
    want = eager.run(x, t)
    # the graph runs the batch padded to 4: other GEMM and scan-split choices, so rounding
    # differs from the unpadded eager batch of 3 (measured 1.06e-4 at an output scale of ~2)
    assert float((graphs.run(x, t) - want).abs().max()) < 1e-4 * max(1.0, float(want.abs().max()))
    bf16 = build_engine(loaded, device, EngineOptions(tile=TILE, precision="bf16",
                                                      cuda_graphs=False), FIXTURE)
    assert bf16.describe()["precision"] in ("bf16", "fp32")  # fp32 when below 45 dB


@pytest.mark.skipif(not _has_tensorrt(), reason="TensorRT needs CUDA and the tensorrt package")
def test_tensorrt_engine_matches_torch(tmp_path: Path) -> None:
    loaded = load_checkpoint(FIXTURE, device="cuda")
    ckpt = tmp_path / "derain.pth"
    ckpt.write_bytes(FIXTURE.read_bytes())
    engine = build_engine(loaded, torch.device("cuda"),
                          EngineOptions(engine="tensorrt", tile=TILE, max_batch=4), ckpt)
    eager = TorchEngine(loaded.model, loaded.kind, torch.device("cuda"))
    x, t = warmup_inputs(loaded.kind, TILE, batch=3)
    assert float((engine.run(x, t) - eager.run(x, t)).abs().max()) < 1e-3


# ---------------------------------------------------------------- slow: torch.compile


@pytest.mark.slow
def test_compile_engine_matches_eager() -> None:
    """Static shapes at batch 1, 2, 4: a batch of 3 is padded to 4 and the pad rows dropped."""
    loaded = load_checkpoint(FIXTURE)
    x, t = warmup_inputs(loaded.kind, TILE, 3)
    eager_out = TorchEngine(loaded.model, loaded.kind, torch.device("cpu")).run(x, t)
    engine = build_engine(loaded, torch.device("cpu"),
                          EngineOptions(engine="compile", tile=TILE, max_batch=4), FIXTURE)
    engine.warm_up()
    assert engine.describe()["compiled_batch_sizes"] == [1, 2, 4]
    got = engine.run(x, t)
    assert got.shape == eager_out.shape
    assert float((got - eager_out).abs().max()) < 1e-4


def test_vmambair_exports_through_the_cli_and_matches_torch(tmp_path: Path) -> None:
    """A single-pass checkpoint goes through the same `diffmamba export`: one input `x`
    (3 channels, no timestep), and ONNX Runtime matches torch at batch 1 and 3."""
    from service.engines.ort_engine import OnnxRuntimeEngine

    checkpoint = Path(__file__).parent / "fixtures" / "vmambair" / "tiny_checkpoint.pth"
    out = tmp_path / "vmambair.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--tile", "32", "--max-batch", "4",
                 "--output", str(out)]) == 0
    onnx.checker.check_model(str(out))
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["x"]
    vm = load_checkpoint(checkpoint)
    eager = TorchEngine(vm.model, vm.kind, torch.device("cpu"))
    engine = OnnxRuntimeEngine(out, vm.kind, 32, 4, eager)
    for batch in (1, 3):
        x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        got, want = engine.run(x, None), eager.run(x, None)
        assert got.shape == want.shape == (batch, 3, 32, 32)
        assert float((got - want).abs().max()) < 1e-3
    assert engine.stats["fallback_batches"] == 0
