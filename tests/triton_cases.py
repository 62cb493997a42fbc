"""Run under TRITON_INTERPRET=1 (in a subprocess of tests/test_scan_triton.py): the Triton scan
kernels executed by Triton's interpreter on CPU tensors, checked against the reference (values
and, through autograd, gradients).

Why a subprocess: triton.jit decides between compiling and interpreting when a kernel is defined,
i.e. when service.scan.triton_kernel is first imported, so the variable must be set before any
import in the process — other tests may already have imported it without.
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton.runtime.interpreter as interpreter  # noqa: E402


class _IntMeta(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, builtins.int)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, builtins.int)


class _Int(metaclass=_IntMeta):
    """int() that accepts one-element arrays: Triton 3.6's interpreter calls int() on the
    (1,)-shaped arrays that hold loop bounds, which NumPy ≥ 2.4 refuses. Interpreter only."""

    def __new__(cls, x: object = 0, *args: object) -> int:  # type: ignore[misc]
        if isinstance(x, np.ndarray) and x.size == 1:
            x = x.reshape(())
        return builtins.int(x, *args)  # type: ignore[call-overload]


interpreter.int = _Int  # type: ignore[attr-defined]

from test_scan import make_inputs  # noqa: E402

from service.scan import (  # noqa: E402
    selective_scan,
    set_backend,
    triton_kernel,
)
from service.scan.reference import selective_scan_reference  # noqa: E402
from service.scan.triton_kernel import BLOCK_L, selective_scan_triton  # noqa: E402


def kernel_cases() -> list[dict]:
    """(batch, channels, L, N, groups, D/bias, softplus): carries across blocks, a short tail,
    a state size that is not a power of two, groups, and the optional terms off."""
    rows = []
    cases = [
        ((1, 8, 2 * BLOCK_L + 33, 16, 4), True, True),
        ((1, 12, 130, 5, 3), True, True),
        ((1, 8, BLOCK_L, 8, 1), False, True),
        ((1, 6, 40, 8, 2), True, False),
    ]
    for shape, optional, softplus in cases:
        inputs = make_inputs(*shape, with_d=optional, with_bias=optional,
                             delta_range=(-4.0, 1.0) if softplus else (0.01, 1.0))
        got = selective_scan_triton(**inputs, delta_softplus=softplus)
        want = selective_scan_reference(**inputs, delta_softplus=softplus)
        rows.append({"shape": shape, "optional": optional, "softplus": softplus,
                     "max_err": float((got - want).abs().max()),
                     "scale": float(want.abs().max()), "dtype": str(got.dtype)})
    return rows


def split_cases() -> list[dict]:
    """The forward with the sequence split in stretches (summary kernel, then each stretch
    started from the composed summaries): uneven last stretch, tails, N not a power of two,
    batch 2, and more stretches asked for than there are blocks."""
    rows = []
    cases = [((1, 8, 9 * BLOCK_L + 33, 16, 4), 3, True),
             ((2, 12, 7 * BLOCK_L + 5, 5, 3), 4, True),
             ((1, 8, 5 * BLOCK_L, 8, 1), 5, False),
             ((1, 4, 3 * BLOCK_L - 1, 8, 2), 99, True)]
    for shape, splits, softplus in cases:
        inputs = make_inputs(*shape, with_bias=softplus,  # Δ stays positive without softplus
                             delta_range=(-4.0, 1.0) if softplus else (0.01, 0.2))
        got = selective_scan_triton(**inputs, delta_softplus=softplus, splits=splits)
        want = selective_scan_reference(**inputs, delta_softplus=softplus)
        layout = triton_kernel._layout(inputs["u"], inputs["A"], inputs["B"], splits)
        rows.append({"shape": shape, "splits": layout["splits"],
                     "max_err": float((got - want).abs().max()),
                     "scale": float(want.abs().max())})
    return rows


def gradient_cases() -> list[dict]:
    """Every input's gradient from the backward kernel against autograd through the reference,
    for a weighted sum of y (so each output position counts differently)."""
    rows = []
    for shape, optional, softplus, splits in [((2, 8, 2 * BLOCK_L + 22, 5, 2), True, True, 1),
                                              ((1, 4, 6 * BLOCK_L, 8, 1), False, True, 3),
                                              ((1, 6, 70, 4, 3), False, False, 1)]:
        inputs = make_inputs(*shape, with_d=optional, with_bias=optional,
                             delta_range=(-4.0, 1.0) if softplus else (0.01, 1.0))
        names = [k for k, v in inputs.items() if v is not None]

        def grads(fn, inputs=inputs, names=names, softplus=softplus):  # type: ignore[no-untyped-def]
            leaves = {k: v.clone().requires_grad_(True) if v is not None else None
                      for k, v in inputs.items()}
            y = fn(**leaves, delta_softplus=softplus)
            (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
            return {k: leaves[k].grad for k in names}

        split_scan = functools.partial(selective_scan_triton, splits=splits)
        got, want = grads(split_scan), grads(selective_scan_reference)
        rows.append({"shape": shape, "inputs": names, "splits": splits,
                     "rel_err": {k: float((got[k] - want[k]).abs().max())
                                 / max(1.0, float(want[k].abs().max())) for k in names}})
    return rows


def dispatch_case() -> dict:
    """The dispatcher's 'triton' backend, forward and with a gradient."""
    set_backend("triton")
    inputs = make_inputs(1, 8, 70, 8, 2)
    want = selective_scan_reference(**inputs)
    got = selective_scan(**inputs)
    u = inputs["u"].clone().requires_grad_(True)
    selective_scan(**{**inputs, "u": u}).sum().backward()
    u_ref = inputs["u"].clone().requires_grad_(True)
    selective_scan_reference(**{**inputs, "u": u_ref}).sum().backward()
    set_backend(None)
    return {"max_err": float((got - want).abs().max()),
            "grad_err": float((u.grad - u_ref.grad).abs().max()) if u.grad is not None else None}


def network_case() -> dict:
    """A tiny Diff-Mamba pass with the Triton scan equals the same pass with the chunked form."""
    from service.nn import DiffMamba, DiffMambaConfig

    torch.manual_seed(0)
    config = DiffMambaConfig.from_dict({"dim": 8, "num_blocks": [1, 1, 1, 1], "d_state": 4})
    net = DiffMamba(config).eval()
    x, t = torch.randn(1, 6, 8, 8), torch.tensor([700.0])
    with torch.no_grad():
        set_backend("chunked")
        want = net(x, t)
        set_backend("triton")
        got = net(x, t)
    set_backend(None)
    return {"max_err": float((got - want).abs().max()), "scale": float(want.abs().max())}


if __name__ == "__main__":
    if sys.argv[1:] == ["network"]:  # ~30 s under the interpreter: the slow test
        print(json.dumps({"network": network_case()}))
    else:
        print(json.dumps({"kernel": kernel_cases(), "split": split_cases(),
                          "gradients": gradient_cases(),
                          "dispatch": dispatch_case()}))
