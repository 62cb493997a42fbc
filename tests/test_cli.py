"""The ``diffmamba`` command, called in-process on the small fixture checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from service.models import load_checkpoint

CKPT = Path(__file__).parent / "fixtures" / "diffmamba" / "tiny_withbias_checkpoint.pth"
SUFFIX = f"_{CKPT.stem}"  # restore's default suffix for a --checkpoint run


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_restore_keeps_size_mode_and_alpha(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (21, 30, 4), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (17, 9), dtype=np.uint16)
    a = _write(tmp_path / "a.png", rgba)
    b = tmp_path / "b.png"
    Image.fromarray(gray16.astype(np.int32), mode="I").convert("I;16").save(b)
    out = tmp_path / "out"
    code = main(["restore", str(a), str(b), "--checkpoint", str(CKPT), "--steps", "2",
                 "--seed", "3", "--output", str(out), "--device", "cpu"])
    assert code == 0
    ra = Image.open(out / f"a{SUFFIX}.png")
    assert ra.size == (30, 21) and ra.mode == "RGBA"
    assert np.array_equal(np.asarray(ra)[..., 3], rgba[..., 3])
    rb = Image.open(out / f"b{SUFFIX}.png")
    assert rb.size == (9, 17) and rb.mode.startswith("I")
    assert "seed 3; 2 restored, 0 failed" in capsys.readouterr().out


def test_restore_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    src = _write(tmp_path / "x.png", np.full((16, 16, 3), 128, np.uint8))
    for name in ("o1", "o2"):
        assert main(["restore", str(src), "--checkpoint", str(CKPT), "--steps", "1",
                     "--seed", "5", "--output", str(tmp_path / name)]) == 0
    assert (tmp_path / "o1" / f"x{SUFFIX}.png").read_bytes() == \
        (tmp_path / "o2" / f"x{SUFFIX}.png").read_bytes()


def test_restore_reports_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good = _write(tmp_path / "good.png", np.zeros((8, 8, 3), np.uint8))
    code = main(["restore", str(bad), str(good), "--checkpoint", str(CKPT), "--steps", "1",
                 "--output", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 1
    assert "skipping" in captured.out + captured.err
    assert (tmp_path / "o" / f"good{SUFFIX}.png").exists()


def test_bad_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    img = _write(tmp_path / "i.png", np.zeros((8, 8, 3), np.uint8))
    assert main(["restore", str(img), "--checkpoint", str(junk)]) == 2
    assert "diffmamba: error:" in capsys.readouterr().err


def test_bad_steps_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["restore", "x.png", "--checkpoint", str(CKPT), "--steps", "0"])
    assert exc.value.code == 2


def test_inspect_and_convert(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(CKPT), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "diffmamba" and info["config"]["dim"] == 8
    out = tmp_path / "derain.safetensors"
    assert main(["convert", str(CKPT), str(out)]) == 0
    assert load_checkpoint(out).config == load_checkpoint(CKPT).config
    assert main(["convert", str(CKPT), str(tmp_path / "x.pth")]) == 2


def test_large_image_is_restored_in_tiles(tmp_path: Path) -> None:
    src = _write(tmp_path / "big.png", np.random.default_rng(1).integers(0, 256, (70, 90, 3),
                                                                          dtype=np.uint8))
    out = tmp_path / "o"
    assert main(["restore", str(src), "--checkpoint", str(CKPT), "--steps", "1", "--seed", "0",
                 "--tile", "32", "--overlap", "8", "--output", str(out)]) == 0
    assert Image.open(out / f"big{SUFFIX}.png").size == (90, 70)
    assert main(["restore", str(src), "--checkpoint", str(CKPT), "--tile", "30"]) == 2
