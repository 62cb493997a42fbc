"""The Triton selective-scan kernels (the GPU default without mamba-ssm), forward and backward,
run by Triton's interpreter on the CPU so that CI checks the very kernel source the GPU
compiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the triton package is not installed")

CASES = Path(__file__).with_name("triton_cases.py")


def run_cases(*args: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(CASES), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results() -> dict:
    return run_cases()


def test_kernel_matches_reference(results: dict) -> None:
    assert len(results["kernel"]) == 4
    for row in results["kernel"]:
        assert row["max_err"] <= 1e-5 * max(1.0, row["scale"]), row
        assert row["dtype"] == "torch.float32"


def test_split_forward_matches_reference(results: dict) -> None:
    rows = results["split"]
    assert [row["splits"] for row in rows] == [3, 4, 5, 3]  # 99 asked, 3 blocks
    for row in rows:
        assert row["max_err"] <= 1e-5 * max(1.0, row["scale"]), row


def test_backward_kernel_matches_reference_gradients(results: dict) -> None:
    assert len(results["gradients"]) == 3
    for row in results["gradients"]:
        assert set(row["rel_err"]) == set(row["inputs"])
        for name, err in row["rel_err"].items():
            assert err <= 1e-5, (row["shape"], name, err)


def test_dispatch_runs_it_forward_and_backward(results: dict) -> None:
    case = results["dispatch"]
    assert case["max_err"] <= 1e-4
    assert case["grad_err"] is not None and case["grad_err"] <= 1e-4


@pytest.mark.slow
def test_network_pass_with_triton_scan_matches_chunked() -> None:
    case = run_cases("network")["network"]
    assert case["max_err"] <= 1e-4 * max(1.0, case["scale"]), case


def test_triton_on_cpu_tensors_is_refused_without_the_interpreter() -> None:
    code = ("import torch; from service.scan import selective_scan, set_backend\n"
            "set_backend('triton')\n"
            "u = torch.zeros(1, 2, 4)\n"
            "try:\n"
            "    selective_scan(u, u, torch.zeros(2, 1), torch.zeros(1, 1, 1, 4),"
            " torch.zeros(1, 1, 1, 4))\n"
            "except RuntimeError as exc:\n"
            "    print('refused:', exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    out = proc.stdout + proc.stderr
    assert "refused:" in proc.stdout and "cannot run on cpu" in proc.stdout, out


def _signature(fn, constexprs: dict) -> dict:  # type: ignore[no-untyped-def]
    """Pointers are the *_ptr arguments (fp32), the rest int32 sizes and strides."""
    return {name: "constexpr" if name in constexprs else "*fp32" if name.endswith("_ptr")
            else "i32" for name in fn.arg_names}


@pytest.mark.parametrize(("n_state", "optional"), [(8, True), (32, False)])
def test_kernels_compile_for_hopper(n_state: int, optional: bool) -> None:
    """The interpreter does not catch what only the compiler rejects: build both kernels to a
    cubin for sm_90 (the H100/H200), which needs Triton's bundled ptxas but no GPU."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from service.scan import triton_kernel as tk

    block_d = tk._block_d(channels=128, per_group=32, n_p2=n_state)
    common = {"HAS_D": optional, "HAS_BIAS": optional, "SOFTPLUS": True, "N": n_state,
              "BLOCK_D": block_d, "BLOCK_L": tk.BLOCK_L}
    summary = {k: v for k, v in common.items() if k != "HAS_D"}
    for fn, constexprs in ((tk._scan_fwd, {**common, "SAVE_STATES": True}),
                           (tk._scan_summary, summary), (tk._scan_bwd, common)):
        source = ASTSource(fn=fn, signature=_signature(fn, constexprs), constexprs=constexprs)
        kernel = triton_compile(source, target=GPUTarget("cuda", 90, 32))
        assert kernel.asm.get("cubin"), fn.__name__


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("splits", [None, 1])
def test_cuda_triton_kernels_match_chunked(splits: int | None) -> None:
    """On the GPU itself, at a level-1-like length: the forward (split for the GPU when None)
    and every gradient of the backward against the chunked form under autograd."""
    import torch
    from test_scan import make_inputs

    from service.scan.chunked import selective_scan_chunked
    from service.scan.triton_kernel import _layout, selective_scan_triton

    inputs = make_inputs(2, 64, 8192 + 17, 16, 4, device="cuda")
    if splits is None:
        assert _layout(inputs["u"], inputs["A"], inputs["B"])["splits"] > 1
    names = list(inputs)
    got_leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    want_leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    got = selective_scan_triton(**got_leaves, splits=splits)
    want = selective_scan_chunked(**want_leaves)
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-4 * max(1.0, scale)
    weights = torch.linspace(-1, 1, want.numel(), device="cuda").reshape(want.shape)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    for name in names:
        g, w = got_leaves[name].grad, want_leaves[name].grad
        assert float((g - w).abs().max()) <= 1e-3 * max(1.0, float(w.abs().max())), name
