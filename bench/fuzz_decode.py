"""Fuzz the upload decoder: any bytes decode, or raise the imaging layer's ``ImageError``.

The service hands untrusted bytes to two parsers before any pixel reaches the network:
``read_header`` (the memory estimate, service.runtime.header) and ``decode_image``
(service.imaging.decode). Whatever the bytes, the first must answer a header or None and the
second a decoded image or an ``ImageError`` (a 4xx); anything else would be a 500. Inputs are
arbitrary bytes and real tiny images of every accepted format and many modes, mutated (bit flips,
byte overwrites, cuts, duplicated or deleted runs, spliced headers).

    python bench/fuzz_decode.py --seconds 600         # atheris if installed, else hypothesis
    python bench/fuzz_decode.py --seconds 60 --engine hypothesis
    pip install -e '.[fuzz]'                          # atheris: coverage-guided

A failing input is written to ``--crashes`` (default runs/fuzz/) and the run exits 1.
tests/test_fuzz_decode.py runs the hypothesis form for a few hundred inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

MAX_PIXELS = 1 << 20  # the limit each decode runs under: a bound on every input's cost
MAX_BYTES = 1 << 20
MAX_INPUT = 4096  # longest generated input (hypothesis)


def _save(image: Any, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def seed_images() -> list[bytes]:
    """Tiny real images: every accepted format, the modes and options their parsers branch on."""
    from PIL import Image  # (imported late: run_atheris instruments it first)

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (9, 13, 4), dtype=np.uint8))
    gray = rgb.convert("L")
    gray16 = Image.fromarray(rng.integers(0, 65536, (9, 13), dtype=np.uint16))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    cmyk = rgb.convert("CMYK")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: decode applies the orientation
    return [
        _save(rgb, "PNG"), _save(rgba, "PNG"), _save(gray, "PNG"), _save(gray16, "PNG"),
        _save(palette, "PNG", transparency=3), _save(gray.convert("LA"), "PNG"),
        _save(rgb.convert("1"), "PNG"), _save(rgb, "PNG", exif=exif.tobytes()),
        _save(rgb, "JPEG", quality=80), _save(gray, "JPEG"), _save(cmyk, "JPEG"),
        _save(rgb, "JPEG", progressive=True), _save(rgb, "JPEG", exif=exif.tobytes()),
        _save(rgb, "WEBP", quality=70), _save(rgba, "WEBP", lossless=True),
        _save(rgb, "TIFF"), _save(rgb, "TIFF", compression="tiff_deflate"),
        _save(gray16, "TIFF"), _save(cmyk, "TIFF"), _save(gray.convert("F"), "TIFF"),
        _save(rgba, "TIFF", compression="tiff_lzw"),
        _save(rgb, "BMP"), _save(palette, "BMP"), _save(gray, "BMP"),
    ]


def decode_target() -> Callable[[bytes], None]:
    """The property, as a function of one input: returns, or raises what is not allowed."""
    from service.imaging import ImageError, decode_image
    from service.runtime.header import read_header

    def check(data: bytes) -> None:
        read_header(data)  # answers a header or None, never raises
        for scale in (1, 4):
            with contextlib.suppress(ImageError):
                decode_image(data, max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES,
                             output_scale=scale)

    return check


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "delete", "duplicate", "insert",
                                   "splice"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "cut":
            del data[at:]
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:  # another image's bytes from here on
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other) - 1)):]
    return bytes(data[:MAX_INPUT])


def inputs(seeds: list[bytes] | None = None) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, a real format's magic number then anything, or a mutated real image."""
    seeds = seed_images() if seeds is None else seeds
    magic = st.sampled_from([s[:16] for s in seeds])
    return st.one_of(
        st.binary(max_size=256),
        st.tuples(magic, st.binary(max_size=512)).map(lambda t: t[0] + t[1]),
        mutated(seeds), mutated(seeds), mutated(seeds),
    )


def _save_crash(crashes: Path, data: bytes) -> Path:
    crashes.mkdir(parents=True, exist_ok=True)
    path = crashes / f"crash-{hashlib.sha256(data).hexdigest()[:16]}"
    path.write_bytes(data)
    return path


def run_hypothesis(seconds: float, crashes: Path) -> int:
    """Batches of random inputs until the time is up; -> number of inputs tried."""
    from hypothesis import HealthCheck, given, settings

    check = decode_target()
    strategy = inputs()
    tried, slowest = 0, (0.0, b"")
    deadline = time.monotonic() + seconds

    @settings(max_examples=500, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def batch(data: bytes) -> None:
        nonlocal tried, slowest
        tried += 1
        t0 = time.perf_counter()
        try:
            check(data)
        except Exception:
            print(f"failing input saved to {_save_crash(crashes, data)}", file=sys.stderr)
            raise
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, (elapsed, data))

    while time.monotonic() < deadline:
        batch()
    print(f"hypothesis: {tried} inputs in {seconds:g} s, no failure; slowest input "
          f"{slowest[0] * 1e3:.1f} ms ({len(slowest[1])} bytes)")
    return tried


def run_atheris(seconds: float, crashes: Path) -> None:
    """libFuzzer's coverage-guided loop over the Python code of the decoder and Pillow's
    plugins, starting from the seed images; it exits the process when the time is up."""
    import atheris

    # Only the parsers are instrumented (not torch, which service.runtime imports).
    with atheris.instrument_imports(include=["PIL", "service.imaging", "service.runtime.header"]):
        check = decode_target()
    corpus = Path(tempfile.mkdtemp(prefix="fuzz-decode-"))
    for i, data in enumerate(seed_images()):
        (corpus / f"seed-{i}").write_bytes(data)
    crashes.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", f"-max_len={MAX_INPUT}",
                   "-rss_limit_mb=4096", f"-artifact_prefix={crashes}/", str(corpus)], check)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    # Pillow warns about each corrupt EXIF block or TIFF tag it skips: expected here, by the
    # thousand. (Its decompression-bomb warning is a RuntimeWarning and stays on.)
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--crashes", type=Path, default=Path("runs/fuzz"))
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    if engine == "atheris":
        run_atheris(args.seconds, args.crashes)
        return 0
    try:
        run_hypothesis(args.seconds, args.crashes)
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
