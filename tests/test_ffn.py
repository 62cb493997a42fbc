"""The gated feed-forward's CPU strip path computes the whole-image function exactly."""

from __future__ import annotations

import pytest
import torch

from service.nn import ffn as ffn_module
from service.nn.ffn import GatedDConvFeedForward, strip_rows


def whole(block: GatedDConvFeedForward, x: torch.Tensor) -> torch.Tensor:
    return block.gate_out(block.dwconv(block.project_in(x)))


@pytest.mark.parametrize(
    ("shape", "rows", "channels_last"),
    [
        ((1, 8, 37, 29), 8, False),  # a short last strip
        ((2, 8, 16, 16), 1, True),  # one-row strips: both halo rows from the neighbours
        ((1, 8, 9, 12), 4, True),
        ((1, 8, 5, 7), 16, False),  # one strip taller than the image
    ],
)
def test_strips_equal_the_whole_image(shape: tuple[int, ...], rows: int,
                                      channels_last: bool) -> None:
    torch.manual_seed(0)
    block = GatedDConvFeedForward(shape[1], expansion=2.66, bias=True)
    x = torch.randn(shape)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = whole(block, x)
        got = block.forward_strips(x, rows)
    assert got.shape == want.shape
    # The same arithmetic on fewer rows; oneDNN may still pick another kernel for another shape
    # on another instruction set, so allow fp32 rounding of a 9·C-term sum, not bit equality.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_strip_gradients_equal_the_whole_image() -> None:
    torch.manual_seed(1)
    block = GatedDConvFeedForward(6, expansion=2.0, bias=False)
    x = torch.randn(2, 6, 11, 10)
    grads = []
    for fn in (lambda x: whole(block, x), lambda x: block.forward_strips(x, 3)):
        leaf = x.clone().requires_grad_(True)
        block.zero_grad()
        weights = torch.linspace(-1, 1, leaf.numel()).reshape(leaf.shape)
        (fn(leaf) * weights).sum().backward()
        grads.append([leaf.grad, *(p.grad.clone() for p in block.parameters())])
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_forward_takes_strips_on_cpu_only_when_the_image_is_taller(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    block = GatedDConvFeedForward(4, expansion=2.0)
    calls: list[int] = []
    original = block.forward_strips
    monkeypatch.setattr(block, "forward_strips",
                        lambda x, rows: calls.append(rows) or original(x, rows))
    monkeypatch.setattr(ffn_module, "STRIP_BYTES", 4 * 16 * 16 * 4 * 3)  # 3 rows of (4, 16, 16)
    x = torch.randn(4, 4, 20, 16)
    assert strip_rows(4, 16, 16) == 3
    with torch.no_grad():
        torch.testing.assert_close(block(x), whole(block, x), rtol=1e-5, atol=1e-5)
        block(torch.randn(4, 4, 3, 16))  # not taller than one strip: the whole-image form
    assert calls == [3]


def test_export_takes_the_whole_image_form(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnx")
    import onnx

    block = GatedDConvFeedForward(4, expansion=2.0).eval()
    path = tmp_path / "ffn.onnx"
    original = ffn_module.STRIP_BYTES
    ffn_module.STRIP_BYTES = 1  # one-row strips, were strips taken
    try:
        torch.onnx.export(block, (torch.randn(1, 4, 12, 12),), str(path), dynamo=False)
    finally:
        ffn_module.STRIP_BYTES = original
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    assert len(convs) == 3


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gate_on_a_channels_last_hidden_tensor_is_the_same_function(precision: str) -> None:
    """The gate copies a channels-last half before GELU (a strided view is slow on the CPU);
    the numbers are those of the plain NCHW gate."""
    torch.manual_seed(0)
    block = GatedDConvFeedForward(8, expansion=2.66, bias=True)
    hidden = torch.randn(2, 2 * 21, 11, 13)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                         enabled=precision == "bf16"):
        want = block.gate_out(hidden.to(dtype))
        got = block.gate_out(hidden.to(dtype).contiguous(memory_format=torch.channels_last))
    assert got.dtype == want.dtype
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)
