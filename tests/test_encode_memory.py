"""The encoder quantises in row strips: the output does not depend on the strip size, and the
encode phase holds little more than its float input, as ``estimate_request`` counts it."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import service.imaging.encode as encode
from service.imaging import DecodedImage, encode_image
from service.runtime.memory import (
    ENCODE_EXTRA_BPP,
    FLOAT_BPP,
    current_rss,
    peak_rss,
    release_memory,
    reset_peak_rss,
)


def _like(height: int, width: int, *, grayscale: bool = False, bit_depth: int = 8,
          alpha: bool = False) -> DecodedImage:
    rng = np.random.default_rng(1)
    return DecodedImage(
        rgb=np.broadcast_to(np.zeros((1, 1, 3), np.float32), (height, width, 3)),
        alpha=rng.integers(0, 256, (height, width), dtype=np.uint8) if alpha else None,
        grayscale=grayscale, bit_depth=bit_depth, format="PNG", mode="RGB")


def _photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour waves with a little grain: compresses like a photograph."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.empty((height, width, 3), np.float32)
    for c in range(3):
        rgb[..., c] = 0.5 + 0.4 * np.sin(xx / (37 + 11 * c) + yy / (53 - 7 * c))
    rgb += np.random.default_rng(seed).normal(0, 0.02, rgb.shape).astype(np.float32)
    return rgb


CASES = [
    ("png", {}), ("png", {"alpha": True}), ("png", {"grayscale": True}),
    ("png", {"grayscale": True, "bit_depth": 16}), ("png", {"grayscale": True, "alpha": True}),
    ("tiff", {"grayscale": True, "bit_depth": 16}), ("webp", {"grayscale": True}),
    ("webp", {"alpha": True}), ("webp", {"grayscale": True, "alpha": True}), ("jpeg", {}),
    ("jpeg", {"alpha": True}), ("tiff", {"alpha": True}),
]


@pytest.mark.parametrize(("fmt", "kind"), CASES)
def test_output_does_not_depend_on_the_strip_size(fmt: str, kind: dict[str, object],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    # Out of range and just around the rounding points, in float64 and a strided layout.
    rgb = (rng.random((37, 53, 3)) * 1.4 - 0.2).transpose(1, 0, 2).copy().transpose(1, 0, 2)
    rgb[0, :3] = [[0.5 / 255, 1.5 / 255, 254.5 / 255]] * 3
    if kind.get("grayscale"):
        rgb[..., 1] = rgb[..., 2] = rgb[..., 0]
    like = _like(37, 53, **kind)  # type: ignore[arg-type]
    monkeypatch.setattr(encode, "STRIP_PIXELS", 10**9)  # one strip: the whole image at once
    whole = encode_image(rgb, like, fmt)
    outputs = set()
    for pixels in (1, 53 * 3, 1000):  # a row, three rows, rows that do not divide the height
        monkeypatch.setattr(encode, "STRIP_PIXELS", pixels)
        outputs.add(encode_image(rgb, like, fmt))
    assert outputs == {whole}
    decoded = np.asarray(Image.open(io.BytesIO(whole[0])))
    assert decoded.shape[:2] == (37, 53)
    if fmt == "png" and not kind:  # rounding to nearest with clipping, checked directly
        expected = np.rint(np.clip(rgb.astype(np.float32), 0, 1) * np.float32(255))
        assert np.array_equal(decoded, expected.astype(np.uint8))


def _noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(3).random((height, width, 3), dtype=np.float32)


def encode_peak(fmt: str, make: str, alpha: bool, height: int = 1536, width: int = 2048) -> float:
    """Bytes per pixel the encoder adds to the RSS at its peak, over its float input."""
    rgb = {"photo": _photo_like, "noise": _noise}[make](height, width)
    like = _like(height, width, alpha=alpha)
    release_memory()
    assert reset_peak_rss()
    before = current_rss()
    encode_image(rgb, like, fmt)
    return (peak_rss() - before) / (height * width)


def _encode_peak_fresh(fmt: str, make: str, alpha: bool) -> float:
    """``encode_peak`` in a fresh interpreter: a heap that earlier tests left fragmented would
    blur a figure of a few bytes per pixel."""
    code = ("import sys; sys.path[:0] = sys.argv[1:3]; import test_encode_memory as t; "
            f"print(t.encode_peak({fmt!r}, {make!r}, {alpha!r}))")
    here = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", code, str(here), str(here.parent)],
                         capture_output=True, text=True, timeout=120, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.parametrize(("fmt", "make", "alpha"), [
    ("png", "photo", False), ("png", "noise", True), ("jpeg", "noise", False),
    ("tiff", "noise", True), ("webp", "photo", True),
])
def test_encode_peak_is_within_the_estimate(fmt: str, make: str, alpha: bool) -> None:
    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs to measure a peak")
    extra = _encode_peak_fresh(fmt, make, alpha)  # 36 MB of float input
    assert 0 < extra <= ENCODE_EXTRA_BPP[fmt.upper()], extra
    if fmt == "png" and make == "photo":
        # Pillow's RGB image (4) and the compressed bytes: under 20 bytes per pixel with the
        # input; image-sized float temporaries alone would add 12 each.
        assert FLOAT_BPP + extra <= 20, extra


def test_the_estimate_counts_the_format_the_result_is_encoded_as() -> None:
    from types import SimpleNamespace

    from serving import png_bytes, random_image

    from service.models.kinds import DIFFUSION
    from service.runtime.memory import estimate_request
    from service.runtime.pipeline import encoded_format, header_estimate
    from service.settings import Settings

    assert encoded_format("PNG", None) == "PNG"
    assert encoded_format("BMP", None) == "PNG"  # BMP is read, never written
    assert encoded_format("PNG", "jpg") == "JPEG"
    assert encoded_format("PNG", "gif") is None  # refused later, with its own error
    encode_phase = {f: estimate_request(DIFFUSION, 2048, 2048, tile=256, overlap=32,
                                        output_format=f).phases["encode"]
                    for f in ("PNG", "JPEG", "TIFF", "WEBP", None)}
    assert encode_phase["PNG"] == encode_phase["JPEG"] < encode_phase["TIFF"] < encode_phase["WEBP"]
    assert encode_phase[None] == encode_phase["WEBP"]  # not known: the costliest
    task = SimpleNamespace(kind=DIFFUSION)
    settings = Settings(device="cpu")
    body = png_bytes(random_image(64, 96))
    as_input = header_estimate(task, settings, None, body)[1]  # type: ignore[arg-type]
    as_webp = header_estimate(task, settings, None, body, "webp")[1]  # type: ignore[arg-type]
    assert as_input is not None and as_webp is not None
    assert as_input.phases["encode"] < as_webp.phases["encode"] == estimate_request(
        DIFFUSION, 64, 96, tile=256, overlap=32, output_format="WEBP").phases["encode"]
