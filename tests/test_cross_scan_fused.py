"""The fused CPU route of SS2D against the generic path with the reference scan: values, grads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import service.scan as scan
from service.nn import ss2d as ss2d_module
from service.nn.ss2d import SS2D

pytestmark = pytest.mark.skipif(
    "cpu" not in scan.available_backends(), reason="numba not installed"
)

TOL = 1e-4


def make_module(channels: int, n_state: int, rank: int, seed: int = 0) -> SS2D:
    """An SS2D with trained-looking parameters (spread biases, A and D), not the fresh init."""
    torch.manual_seed(seed)
    module = SS2D(channels, d_state=n_state, dt_rank=rank)
    with torch.no_grad():
        module.dt_projs_bias.normal_(0.0, 1.5)
        module.A_logs.add_(torch.randn_like(module.A_logs))
        module.Ds.normal_()
        module.out_norm.weight.normal_(1.0, 0.2)
    return module


def run(module: SS2D, x: torch.Tensor, backend: str, dy: torch.Tensor | None = None):
    """Output (and with dy, the gradients of x and of every parameter) with `backend`."""
    scan.set_backend(backend)
    try:
        x = x.clone().requires_grad_(dy is not None)
        module.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(dy is not None):
            out = module(x)
        if dy is None:
            return out, {}
        out.backward(dy)
        grads = {name: p.grad.clone() for name, p in module.named_parameters()}
        return out.detach(), {"x": x.grad.clone(), **grads}
    finally:
        scan.set_backend(None)


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts SS2D forwards that took the fused route."""
    calls: list[int] = []
    original = SS2D.forward_fused

    def spy(self: SS2D, x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return original(self, x)

    monkeypatch.setattr(SS2D, "forward_fused", spy)
    return calls


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """|a − e| ≤ TOL·(1 + |e|) elementwise."""
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    err = ((actual.double() - expected.double()).abs() / (1 + expected.double().abs())).max()
    assert err <= TOL, f"max scaled error {err:.3e}"


def assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Relative to the gradient's own scale (max |expected|)."""
    assert actual.shape == expected.shape
    scale = expected.abs().max().clamp_min(1e-12)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= TOL, f"{name}: relative gradient error {err:.3e}"


# (batch, channels, H, W, N, R): d_inner = 2·channels, so 8 and 40 leave a part-filled channel
# block (LANES = 16) and 32 / 64 fill them.
SHAPES = [
    (1, 4, 5, 7, 4, 1),
    (3, 4, 5, 7, 4, 1),
    (1, 4, 1, 1, 8, 1),
    (3, 16, 16, 8, 8, 2),
    (1, 16, 8, 16, 32, 1),
    (3, 20, 7, 5, 32, 3),
    (1, 32, 9, 6, 16, 2),
    (3, 8, 1, 9, 8, 4),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}c{}_{}x{}_n{}r{}".format(*s))
def test_forward_matches_reference(shape: tuple[int, ...], fused_calls: list[int]) -> None:
    batch, channels, h, w, n_state, rank = shape
    module = make_module(channels, n_state, rank)
    x = torch.randn(batch, h, w, channels, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _ = run(module, x, "reference")
        assert not fused_calls
        actual, _ = run(module, x, "cpu")
    assert fused_calls
    assert_close(actual, expected)


@pytest.mark.parametrize(
    "shape",
    [(2, 4, 5, 7, 4, 1), (1, 20, 6, 9, 8, 3), (3, 8, 1, 1, 32, 2), (2, 16, 33, 7, 16, 2)],
    ids=lambda s: "b{}c{}_{}x{}_n{}r{}".format(*s),
)
def test_gradients_match_reference(shape: tuple[int, ...], fused_calls: list[int]) -> None:
    batch, channels, h, w, n_state, rank = shape
    module = make_module(channels, n_state, rank, seed=2)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(batch, h, w, channels, generator=generator)
    dy = torch.randn(batch, h, w, channels, generator=generator)
    out_ref, expected = run(module, x, "reference", dy)
    out, actual = run(module, x, "cpu", dy)
    assert fused_calls
    assert_close(out, out_ref)
    assert set(actual) == set(expected)
    for name in expected:
        assert_grad_close(actual[name], expected[name], name)


@pytest.mark.parametrize("slices", [1, 2, 3])
def test_backward_channel_slices_sum_partials(slices: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three channel blocks (d_inner = 48) split over 1, 2 (uneven) and 3 slices per image."""
    from service.scan import cross

    module = make_module(24, 8, 2, seed=4)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 5, 24, generator=generator)
    dy = torch.randn(2, 6, 5, 24, generator=generator)
    _, expected = run(module, x, "reference", dy)
    monkeypatch.setattr(cross, "_slices", lambda batch, blocks: slices)
    _, actual = run(module, x, "cpu", dy)
    for name in expected:
        assert_grad_close(actual[name], expected[name], name)


def test_inference_and_training_forward_agree() -> None:
    """Storing checkpoints (training) does not change the forward's numbers."""
    module = make_module(8, 8, 1)
    x = torch.randn(2, 7, 6, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        inferred, _ = run(module, x, "cpu")
    trained, _ = run(module, x, "cpu", torch.ones(2, 7, 6, 8))
    assert torch.equal(inferred, trained)


def test_long_sequence_stays_finite_and_matches_chunked() -> None:
    """A 64×48 map (L = 3072, 96 checkpoint blocks) against the chunked backend, large Δ."""
    module = make_module(8, 8, 1, seed=7)
    with torch.no_grad():
        module.dt_projs_bias.add_(4.0)
    x = torch.randn(1, 64, 48, 8, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected, _ = run(module, x, "chunked")
        actual, _ = run(module, x, "cpu")
    assert_close(actual, expected)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_generic_path_when_not_cpu_backend_float64_or_tracing(fused_calls: list[int]) -> None:
    module = make_module(4, 4, 1)
    x = torch.randn(1, 3, 5, 4)
    with torch.no_grad():
        run(module, x, "chunked")
        run(module.double(), x.double(), "cpu")
        module.float()
        scan.set_backend("cpu")
        try:
            assert ss2d_module.cpu_fused(x)
            traced = torch.jit.trace(module, x, check_trace=False)
        finally:
            scan.set_backend(None)
    assert not fused_calls
    assert "prim::PythonOp" not in str(traced.graph)


def test_softplus_helpers_match_torch() -> None:
    from service.scan import cross_kernel

    x = torch.linspace(-40.0, 40.0, 4001)
    points = x.numpy()
    softplus = torch.tensor([float(cross_kernel.softplus(v)) for v in points])
    both = torch.tensor([cross_kernel.softplus_and_slope(v) for v in points]).double()
    expected = torch.nn.functional.softplus(x.double())
    assert ((softplus.double() - expected).abs() / expected).max() < 1e-6
    assert torch.equal(both[:, 0], softplus.double())
    assert (both[:, 1] - torch.sigmoid(x.double())).abs().max() < 1e-7


def test_kernel_cache_key_tracks_cpu_kernel_source() -> None:
    """numba keys its on-disk cache on the kernel's own file plus its closure: the closure must
    be exactly the digest of cpu_kernel.py (whose fast_exp the kernels inline), nothing else."""
    import hashlib

    from service.scan import cpu_kernel, cross_kernel

    digest = hashlib.sha256(Path(cpu_kernel.__file__).read_bytes()).hexdigest()
    for kernel in (cross_kernel.cross_forward, cross_kernel.cross_backward):
        closure = kernel.py_func.__closure__
        assert [cell.cell_contents for cell in closure] == [digest]


def test_warmup_compiles_both_kernels() -> None:
    from service.scan import cross, cross_kernel

    cross.warmup()
    assert cross_kernel.cross_forward.signatures
    assert cross_kernel.cross_backward.signatures


@pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning"
)
def test_onnx_export_with_cpu_backend_uses_standard_ops(
    tmp_path: Path, fused_calls: list[int]
) -> None:
    """Exporting while the backend is `cpu` takes the generic path; onnxruntime agrees."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    module = make_module(4, 4, 1).eval()
    x = torch.randn(1, 5, 7, 4, generator=torch.Generator().manual_seed(9))
    path = tmp_path / "ss2d.onnx"
    scan.set_backend("cpu")
    try:
        torch.onnx.export(module, (x,), str(path), input_names=["x"], dynamo=False)
        with torch.no_grad():
            expected = module(x)
    finally:
        scan.set_backend(None)
    assert len(fused_calls) == 1  # the eager call above, not the export
    (got,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    assert_close(torch.from_numpy(got), expected)


@pytest.mark.parametrize("lanes", [1, 16, 32, 64])
@pytest.mark.parametrize("shape", [(3, 20, 7, 5, 32, 3), (1, 48, 9, 6, 8, 2)],
                         ids=lambda s: "b{}c{}_{}x{}_n{}r{}".format(*s))
def test_every_forward_block_width_matches_reference(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], lanes: int,
    fused_calls: list[int],
) -> None:
    """The forward's block width is a speed choice only: d_inner 40 and 96 leave part-filled
    blocks at 32 and 64, and width 1 is a block per channel."""
    from service.scan import cross

    monkeypatch.setattr(cross, "FORWARD_LANES", (lanes,))
    monkeypatch.setattr(cross, "LANES", lanes)  # the fallback when threads outnumber tasks
    batch, channels, h, w, n_state, rank = shape
    module = make_module(channels, n_state, rank)
    x = torch.randn(batch, h, w, channels, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _ = run(module, x, "reference")
        actual, _ = run(module, x, "cpu")
    assert fused_calls
    assert_close(actual, expected)


def test_forward_block_width_keeps_every_thread_busy() -> None:
    from service.scan.cross import LANES, forward_lanes

    assert forward_lanes(1, 192, 1) == 64
    assert forward_lanes(1, 192, 2) == 64  # 3 tasks
    assert forward_lanes(1, 64, 2) == 32  # 64 wide would leave a thread idle
    assert forward_lanes(1, 32, 2) == LANES
    assert forward_lanes(4, 32, 2) == 64  # batch items are tasks too
    assert forward_lanes(1, 16, 8) == LANES  # never narrower than a vector
