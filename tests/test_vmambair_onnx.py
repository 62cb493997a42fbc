"""VmambaIR exports to ONNX (the chunked scan's standard ops) and ONNX Runtime agrees with torch.

A single-pass model has one input, the image ``x`` (B, 3, H, W); no timestep. The batch axis is
dynamic; H and W are fixed at export (a multiple of 8, so the graph holds no padding branch):
an engine serves tiles of that size, and whole images of other sizes need the torch path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import service.scan as scan
from service.models import load_model

CKPT = Path(__file__).parent / "fixtures" / "vmambair" / "tiny_checkpoint.pth"


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("backend", ["chunked", "cpu"])
def test_onnx_runtime_matches_torch(tmp_path: Path, backend: str) -> None:
    """Exported while either backend is active (export always takes the chunked form)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if backend not in scan.available_backends():
        pytest.skip(f"{backend} backend unavailable")
    model = load_model(CKPT)
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "vmambair.onnx"
    scan.set_backend(backend)
    try:
        with torch.no_grad():
            expected = model(x)
            torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    finally:
        scan.set_backend(None)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    (got,) = session.run(None, {"x": x.numpy()})
    assert got.shape == tuple(expected.shape)
    assert (torch.from_numpy(got) - expected).abs().max().item() < 1e-3
    # the batch is dynamic (the batcher's passes vary in size); H, W are the exported ones
    other = torch.rand(3, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _run(model, other, backend)
    (got,) = session.run(None, {"x": other.numpy()})
    assert (torch.from_numpy(got) - expected).abs().max().item() < 1e-3


def _run(model: torch.nn.Module, x: torch.Tensor, backend: str) -> torch.Tensor:
    scan.set_backend(backend)
    try:
        return model(x)
    finally:
        scan.set_backend(None)
