"""Selective-scan backends against the step-by-step reference: values, gradients, dispatch."""

from __future__ import annotations

import logging
import math
import sys

import pytest
import torch

import service.scan as scan
from service.scan import cuda as scan_cuda
from service.scan.chunked import selective_scan_chunked
from service.scan.reference import selective_scan_reference

HAS_NUMBA = "cpu" in scan.available_backends()
HAS_CUDA = torch.cuda.is_available()

if HAS_NUMBA:
    from service.scan import cpu_kernel
    from service.scan.cpu import selective_scan_cpu


def make_inputs(
    batch: int,
    channels: int,
    length: int,
    n_state: int,
    groups: int,
    *,
    seed: int = 0,
    with_d: bool = True,
    with_bias: bool = True,
    delta_range: tuple[float, float] = (-4.0, 1.0),
    device: str = "cpu",
) -> dict[str, torch.Tensor | None]:
    """Trained-network magnitudes: pre-softplus Δ in delta_range, A = −exp(U(0, 3))."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = delta_range
    inputs: dict[str, torch.Tensor | None] = {
        "u": torch.randn(batch, channels, length, generator=g),
        "delta": torch.rand(batch, channels, length, generator=g) * (hi - lo) + lo,
        "A": -torch.exp(torch.rand(channels, n_state, generator=g) * 3),
        "B": torch.randn(batch, groups, n_state, length, generator=g),
        "C": torch.randn(batch, groups, n_state, length, generator=g),
        "D": torch.randn(channels, generator=g) if with_d else None,
        "delta_bias": torch.randn(channels, generator=g) * 0.5 if with_bias else None,
    }
    return {k: v.to(device) if v is not None else None for k, v in inputs.items()}


def direct_backends() -> list[str]:
    names = ["chunked"]
    if HAS_NUMBA:
        names.append("cpu")
    return names


def run_backend(name: str, inputs: dict, softplus: bool = True) -> torch.Tensor:
    if name == "chunked":
        return selective_scan_chunked(**inputs, delta_softplus=softplus)
    if name == "cpu":
        return selective_scan_cpu(**inputs, delta_softplus=softplus)
    raise AssertionError(name)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4) -> None:
    """|a − e| ≤ tol·(1 + |e|) elementwise: absolute near 0, relative for large values."""
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all(), "non-finite values"
    err = ((actual.double() - expected.double()).abs() / (1 + expected.double().abs())).max()
    assert err <= tol, f"max scaled error {err:.3e} > {tol:.0e}"


def assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4) -> None:
    """Relative to the gradient's own scale (max |expected|)."""
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs().max() / scale
    assert err <= tol, f"relative gradient error {err:.3e} > {tol:.0e}"


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch: pytest.MonkeyPatch):
    """Each test starts and ends with no override and no cached choice."""
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    scan.set_backend(None)
    yield
    scan.set_backend(None)


SHAPES = [
    # batch, channels, length, N, groups
    (2, 8, 1, 4, 2),
    (1, 8, 37, 4, 1),
    (2, 8, 97, 16, 4),
    (1, 16, 64, 32, 4),
    (3, 12, 33, 8, 2),
    (1, 8, 48, 16, 2),  # VmambaIR channel branch: Dch = 8, G = 2, N = 16
]


@pytest.mark.parametrize("name", direct_backends())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_reference(name: str, shape: tuple[int, ...]) -> None:
    inputs = make_inputs(*shape, seed=sum(shape))
    assert_close(run_backend(name, inputs), selective_scan_reference(**inputs))


@pytest.mark.parametrize("name", direct_backends())
@pytest.mark.parametrize("with_d", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("softplus", [True, False])
def test_forward_options(name: str, with_d: bool, with_bias: bool, softplus: bool) -> None:
    # Without softplus Δ must stay positive, as in a real model: shift the raw values up.
    delta_range = (-4.0, 1.0) if softplus else (0.01, 1.5)
    inputs = make_inputs(
        2,
        8,
        41,
        8,
        2,
        with_d=with_d,
        with_bias=with_bias and softplus,
        delta_range=delta_range,
        seed=3,
    )
    expected = selective_scan_reference(**inputs, delta_softplus=softplus)
    assert_close(run_backend(name, inputs, softplus), expected)


@pytest.mark.parametrize("chunk", [1, 7, 16, 32])
@pytest.mark.parametrize("block_elements", [1, 4096, None])
def test_chunked_any_chunk_and_block(chunk: int, block_elements: int | None) -> None:
    inputs = make_inputs(2, 8, 97, 8, 2, seed=chunk)
    actual = selective_scan_chunked(**inputs, chunk=chunk, block_elements=block_elements)
    assert_close(actual, selective_scan_reference(**inputs))


def test_chunked_rejects_oversized_chunk() -> None:
    with pytest.raises(ValueError, match="chunk"):
        selective_scan_chunked(**make_inputs(1, 4, 8, 4, 1), chunk=64)


@pytest.mark.parametrize("name", direct_backends())
def test_long_sequence_large_delta_stays_finite(name: str) -> None:
    """Δ up to ≈ 6 with |A| up to 20: a 32-step chunk decays by e^-3800, far beyond float32.

    An exp(+cumsum) chunked form overflows here; relative decays / per-step decays must not.
    """
    inputs = make_inputs(1, 4, 4096, 16, 1, delta_range=(-2.0, 6.0), seed=11)
    actual = run_backend(name, inputs)
    assert torch.isfinite(actual).all()
    assert_close(actual, selective_scan_reference(**inputs))


@pytest.mark.parametrize("name", direct_backends())
def test_long_sequence_small_delta_carries_state(name: str) -> None:
    """Tiny Δ and |A| near 1: the state survives thousands of steps, so every carry matters."""
    inputs = make_inputs(1, 4, 4096, 8, 2, delta_range=(-9.0, -6.0), seed=5)
    inputs["A"] = -torch.rand(4, 8, generator=torch.Generator().manual_seed(1)) - 0.05
    assert_close(run_backend(name, inputs), selective_scan_reference(**inputs))


@pytest.mark.parametrize("name", direct_backends())
def test_output_dtype_follows_u(name: str) -> None:
    inputs = make_inputs(1, 8, 20, 4, 2)
    inputs["u"] = inputs["u"].to(torch.bfloat16)
    y = run_backend(name, inputs)
    assert y.dtype == torch.bfloat16
    assert_close(y.float(), selective_scan_reference(**inputs).float(), tol=1e-2)


GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "delta_bias"]


@pytest.mark.parametrize("name", direct_backends())
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_gradients_match_reference(name: str, groups: int, batch: int) -> None:
    base = make_inputs(batch, 8, 37, 4, groups, seed=7 + groups)
    dy = torch.randn(batch, 8, 37, generator=torch.Generator().manual_seed(2))

    def grads(fn) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
        leaves = {k: v.clone().requires_grad_() for k, v in base.items() if v is not None}
        fn(leaves).backward(dy)
        return {k: v.grad for k, v in leaves.items()}

    expected = grads(lambda x: selective_scan_reference(**x))
    actual = grads(lambda x: run_backend(name, x))
    for key in GRAD_NAMES:
        assert_grad_close(actual[key], expected[key])


@pytest.mark.parametrize("name", direct_backends())
def test_gradients_without_softplus_or_d(name: str) -> None:
    base = make_inputs(2, 8, 45, 16, 2, with_d=False, with_bias=False, delta_range=(0.01, 1.0))
    dy = torch.randn(2, 8, 45, generator=torch.Generator().manual_seed(4))
    expected = {k: v.clone().requires_grad_() for k, v in base.items() if v is not None}
    selective_scan_reference(**expected, delta_softplus=False).backward(dy)
    actual = {k: v.clone().requires_grad_() for k, v in base.items() if v is not None}
    run_backend(name, actual, softplus=False).backward(dy)
    for key in ("u", "delta", "A", "B", "C"):
        assert_grad_close(actual[key].grad, expected[key].grad)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
class TestCpuKernel:
    def test_fast_exp_accuracy_and_clamp(self) -> None:
        x = torch.linspace(-87.0, 0.0, 200_001).reshape(1, -1)
        out = torch.empty_like(x)
        cpu_kernel.exp_rows(x.numpy(), out.numpy())
        rel = (out.double() / torch.exp(x.double()) - 1).abs().max()
        assert rel < 1e-6
        far = torch.tensor([[-1e4, -200.0, -88.5]])
        cpu_kernel.exp_rows(far.numpy(), far.numpy())
        assert torch.isfinite(far).all() and (far >= 0).all() and (far < 1e-37).all()

    def test_inference_and_training_forward_agree(self) -> None:
        inputs = make_inputs(2, 8, 70, 8, 2)
        with torch.no_grad():
            y_infer = selective_scan_cpu(**inputs)
        leaves = {
            k: v.clone().requires_grad_() if v is not None else None for k, v in inputs.items()
        }
        y_train = selective_scan_cpu(**leaves)
        assert y_train.grad_fn is not None
        assert torch.equal(y_infer, y_train.detach())

    def test_many_channel_slices_sum_b_and_c_gradients(self) -> None:
        """Backward split into several channel slices per group must still sum B/C grads."""
        from service.scan import cpu as cpu_module

        base = make_inputs(1, 16, 40, 8, 1, seed=21)
        dy = torch.randn(1, 16, 40, generator=torch.Generator().manual_seed(3))
        results = []
        for fn in (selective_scan_reference, selective_scan_cpu):
            leaves = {k: v.clone().requires_grad_() for k, v in base.items() if v is not None}
            fn(**leaves).backward(dy)
            results.append(leaves)
        # Default slicing on this machine, then forced to the maximum.
        original = cpu_module._slices
        try:
            cpu_module._slices = lambda *args: 16  # type: ignore[assignment]
            leaves = {k: v.clone().requires_grad_() for k, v in base.items() if v is not None}
            selective_scan_cpu(**leaves).backward(dy)
        finally:
            cpu_module._slices = original  # type: ignore[assignment]
        for key in ("B", "C", "A", "u", "delta"):
            assert_grad_close(results[1][key].grad, results[0][key].grad)
            assert_grad_close(leaves[key].grad, results[0][key].grad)


class TestDispatch:
    def test_auto_picks_numba_on_cpu(self) -> None:
        assert scan.active_backend("cpu") == ("cpu" if HAS_NUMBA else "chunked")

    @pytest.mark.parametrize("name", ["reference", "chunked"])
    def test_env_var_overrides(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(scan.ENV_VAR, name.upper())
        scan.set_backend(None)
        assert scan.active_backend(torch.device("cpu")) == name
        inputs = make_inputs(1, 8, 20, 4, 2)
        assert_close(scan.selective_scan(**inputs), selective_scan_reference(**inputs))

    def test_env_var_unknown_value_errors(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(scan.ENV_VAR, "tpu")
        scan.set_backend(None)
        with pytest.raises(ValueError, match="auto, reference, chunked, cpu, cuda"):
            scan.active_backend("cpu")
        with pytest.raises(ValueError, match=scan.ENV_VAR):
            scan.selective_scan(**make_inputs(1, 4, 5, 4, 1))

    def test_warmup_validates_env_but_tolerates_gpu_choice(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(scan.ENV_VAR, "nope")
        with pytest.raises(ValueError, match="allowed values"):
            scan.warmup()
        monkeypatch.setenv(scan.ENV_VAR, "cuda")  # a GPU server warming up: nothing to compile
        scan.warmup()

    def test_set_backend_validates(self) -> None:
        with pytest.raises(ValueError, match="allowed values"):
            scan.set_backend("fast")

    def test_set_backend_beats_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(scan.ENV_VAR, "reference")
        scan.set_backend("chunked")
        assert scan.active_backend("cpu") == "chunked"

    def test_cuda_backend_refuses_cpu_tensors(self) -> None:
        scan.set_backend("cuda")
        with pytest.raises(RuntimeError, match="cuda"):
            scan.active_backend("cpu")

    def test_logs_one_info_line(self, caplog: pytest.LogCaptureFixture) -> None:
        inputs = make_inputs(1, 8, 10, 4, 2)
        with caplog.at_level(logging.INFO, logger="service.scan"):
            scan.selective_scan(**inputs)
            scan.selective_scan(**inputs)
            scan.active_backend("cpu")
        lines = [
            r for r in caplog.records if r.name == "service.scan" and r.levelno == logging.INFO
        ]
        assert len(lines) == 1
        assert scan.active_backend("cpu") in lines[0].getMessage()

    @pytest.mark.parametrize("name", ["reference", "chunked", "cpu"])
    def test_dispatch_gradients(self, name: str) -> None:
        if name not in scan.available_backends():
            pytest.skip(f"{name} not available")
        scan.set_backend(name)
        base = make_inputs(1, 8, 23, 4, 2)
        leaves = {k: v.clone().requires_grad_() for k, v in base.items() if v is not None}
        scan.selective_scan(**leaves).square().sum().backward()
        ref = {k: v.clone().requires_grad_() for k, v in base.items() if v is not None}
        selective_scan_reference(**ref).square().sum().backward()
        for key in GRAD_NAMES:
            assert_grad_close(leaves[key].grad, ref[key].grad)

    @pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
    def test_tracing_uses_chunked_form(self) -> None:
        """A trace through the numba kernel would bake its output in as a constant."""

        def fn(u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
            return scan.selective_scan(u, delta, fixed["A"], B, fixed["C"], fixed["D"])

        fixed = make_inputs(1, 8, 19, 4, 2, seed=1)
        other = make_inputs(1, 8, 19, 4, 2, seed=2)
        traced = torch.jit.trace(fn, (fixed["u"], fixed["delta"], fixed["B"]), check_trace=False)
        got = traced(other["u"], other["delta"], other["B"])
        expected = selective_scan_reference(
            other["u"], other["delta"], fixed["A"], other["B"], fixed["C"], fixed["D"]
        )
        assert_close(got, expected)

    def test_bad_shapes_raise_value_error(self) -> None:
        inputs = make_inputs(1, 8, 10, 4, 2)
        inputs["B"] = inputs["B"][:, :, :3]
        with pytest.raises(ValueError, match="B"):
            scan.selective_scan(**inputs)
        inputs = make_inputs(1, 8, 10, 4, 2)
        inputs["C"] = torch.randn(1, 3, 4, 10)
        with pytest.raises(ValueError, match="groups"):
            scan.selective_scan(**inputs)


class TestCudaBackend:
    def test_unavailable_mamba_is_clean(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # import now raises ImportError
        scan_cuda._selective_scan_fn.cache_clear()
        try:
            assert scan_cuda.is_available() is False
            with pytest.raises(RuntimeError, match="mamba-ssm"):
                scan_cuda.selective_scan_cuda(**make_inputs(1, 4, 5, 4, 1))
        finally:
            scan_cuda._selective_scan_fn.cache_clear()

    def test_broken_build_is_clean(self, monkeypatch: pytest.MonkeyPatch) -> None:
        class Broken:
            def __getattr__(self, name: str) -> None:
                raise OSError("undefined symbol: _ZN3c10")

        monkeypatch.setitem(sys.modules, "mamba_ssm", Broken())
        monkeypatch.setitem(sys.modules, "mamba_ssm.ops", None)
        scan_cuda._selective_scan_fn.cache_clear()
        try:
            assert scan_cuda._selective_scan_fn() is None
        finally:
            scan_cuda._selective_scan_fn.cache_clear()

    @pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
    def test_cuda_inputs_match_reference(self) -> None:
        inputs = make_inputs(2, 16, 97, 16, 4, device="cuda")
        expected = selective_scan_reference(
            **{k: v.cpu() if v is not None else None for k, v in inputs.items()}
        )
        assert_close(scan.selective_scan(**inputs).cpu(), expected)
        assert_close(selective_scan_chunked(**inputs).cpu(), expected)
        assert scan.active_backend("cuda") in ("cuda", "triton", "chunked")


def test_zero_length_sequence() -> None:
    inputs = make_inputs(1, 4, 0, 4, 1)
    for name in direct_backends():
        assert run_backend(name, inputs).shape == (1, 4, 0)


def test_reference_decay_guard_is_needed() -> None:
    """Sanity check of the test data: the exp(+cumsum) form really overflows on it."""
    inputs = make_inputs(1, 4, 64, 16, 1, delta_range=(-2.0, 6.0), seed=11)
    delta = torch.nn.functional.softplus(inputs["delta"] + inputs["delta_bias"][None, :, None])
    cumsum = (delta[..., :32, None] * inputs["A"][None, :, None, :]).cumsum(dim=2)
    assert torch.isinf(torch.exp(-cumsum)).any()
    assert math.isfinite(float(torch.exp(cumsum).sum()))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_export_runs_in_onnxruntime(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The exported graph is the chunked form, made of standard ops only."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D, delta_bias):  # type: ignore[no-untyped-def]
            return scan.selective_scan(u, delta, A, B, C, D, delta_bias)

    inputs = make_inputs(1, 8, 37, 4, 2)
    path = tmp_path / "scan.onnx"
    torch.onnx.export(
        Scan(), tuple(inputs.values()), str(path), input_names=list(inputs), dynamo=False
    )
    session = ort.InferenceSession(str(path))
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    (got,) = session.run(None, feed)
    assert_close(torch.from_numpy(got), selective_scan_reference(**inputs))
