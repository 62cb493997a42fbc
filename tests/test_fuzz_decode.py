"""The upload parsers never fail other than with ``ImageError``: bench/fuzz_decode.py, briefly.

The inputs and the property are the fuzzer's own (arbitrary bytes, magic numbers followed by
junk, mutated real images of every accepted format); ``python bench/fuzz_decode.py --seconds
600`` is the long, coverage-guided run (README, "API contract").
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings

from service.imaging import ImageError, decode_image

FUZZER = Path(__file__).resolve().parent.parent / "bench" / "fuzz_decode.py"


def _load_fuzzer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_decode", FUZZER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_decode"] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzzer()
SEEDS = fuzz.seed_images()
CHECK = fuzz.decode_target()


def test_seeds_are_real_images_of_every_format() -> None:
    formats = {decode_image(seed).format for seed in SEEDS}
    assert formats == {"PNG", "JPEG", "WEBP", "TIFF", "BMP"}


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fuzz.inputs(SEEDS))
def test_any_bytes_decode_or_raise_image_error(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow names each corrupt tag it skips
        CHECK(data)


def test_the_property_catches_other_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that leaks, say, a struct.error would fail the fuzz run, not pass it."""
    import service.imaging

    def leaky(*_: object, **__: object) -> None:
        raise KeyError("a parser's internals")

    monkeypatch.setattr(service.imaging, "decode_image", leaky)
    with pytest.raises(KeyError):
        fuzz.decode_target()(SEEDS[0])

    def refusing(*_: object, **__: object) -> None:
        raise ImageError("refused")

    monkeypatch.setattr(service.imaging, "decode_image", refusing)
    fuzz.decode_target()(SEEDS[0])
