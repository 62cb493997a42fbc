"""``diffmamba restore`` on files, folders and globs: where results go and what is never lost.

Runs in-process on the tiny fixture checkpoint (one sampling step, images of a few dozen
pixels), and once on a shipped model through ``--task``.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from service.cli.inputs import IMAGE_SUFFIXES
from service.cli.output import OutputExistsError, write_output

CKPT = Path(__file__).parent / "fixtures" / "diffmamba" / "tiny_withbias_checkpoint.pth"
FAST = ["--checkpoint", str(CKPT), "--steps", "1", "--seed", "0", "--device", "cpu"]
SUFFIX = f"_{CKPT.stem}"


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (12, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """photos/{a.png, b.jpg, sub/a.png, sub/deeper/c.webp, notes.txt, .hidden/x.png}"""
    root = tmp_path / "photos"
    _image(root / "a.png", 1)
    _image(root / "b.jpg", 2)
    _image(root / "sub" / "a.png", 3)
    _image(root / "sub" / "deeper" / "c.webp", 4)
    _image(root / ".hidden" / "x.png", 5)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_folder_gives_the_same_tree_with_suffixes(photos: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["restore", str(photos), "--output", str(out), *FAST]) == 0
    assert _tree(out) == sorted([f"a{SUFFIX}.png", f"b{SUFFIX}.jpg", f"sub/a{SUFFIX}.png",
                                 f"sub/deeper/c{SUFFIX}.webp"])
    assert Image.open(out / "sub" / "deeper" / f"c{SUFFIX}.webp").format == "WEBP"
    printed = capsys.readouterr()
    # One line per image with the output size; no progress bar when stderr is not a terminal.
    assert f"{photos / 'sub' / 'a.png'} -> {out / 'sub' / f'a{SUFFIX}.png'} (16x12, " \
        in printed.out
    assert "seed 0; 4 restored, 0 failed" in printed.out
    assert "pass" not in printed.err and "image" not in printed.err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bars_on_a_terminal_unless_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture,
                                                  quiet: bool) -> None:
    _image(tmp_path / "in" / "a.png", 1)
    _image(tmp_path / "in" / "b.png", 2)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["restore", str(tmp_path / "in"), "-o", str(tmp_path / "o"), *FAST, "--steps", "3"]
    assert main([*argv, *(["--quiet"] if quiet else [])]) == 0
    drawn, out = terminal.getvalue(), capsys.readouterr().out
    if quiet:
        assert drawn == ""
        assert out.strip() == "seed 0; 2 restored, 0 failed"
    else:
        assert "images: 100%" in drawn and "2/2" in drawn
        assert "passes: 100%" in drawn and "4/4" in drawn  # 3 steps visit 4 timesteps
        assert out.count(" -> ") == 2


def test_task_and_suffix_name_the_outputs(tmp_path: Path) -> None:
    src = _image(tmp_path / "in" / "x.png")
    assert main(["restore", str(src), "-o", str(tmp_path / "o"), "--suffix=-clean",
                 "--format", "tiff", *FAST]) == 0
    assert _tree(tmp_path / "o") == ["x-clean.tif"]
    assert main(["restore", str(src), "-o", str(tmp_path / "o2"), "--suffix", "a/b",
                 *FAST]) == 2


def test_a_second_run_does_not_restore_the_first_runs_outputs(
        photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(photos)
    assert main(["restore", ".", "--output", "out", *FAST]) == 0
    first = _tree(photos / "out")
    assert len(first) == 4
    assert main(["restore", ".", "--output", "out", "--overwrite", *FAST]) == 0
    assert _tree(photos / "out") == first


def test_inputs_are_never_overwritten(photos: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    monkeypatch.chdir(photos)
    for extra in ([], ["--overwrite"]):
        assert main(["restore", ".", "--output", ".", "--suffix", "", *extra, *FAST]) == 2
        assert "refusing to overwrite input images" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()} == before
    # --output . with the default suffix writes beside the inputs, touching none of them.
    assert main(["restore", ".", "--output", ".", *FAST]) == 0
    assert all(p.read_bytes() == data for p, data in before.items())
    assert (photos / "sub" / f"a{SUFFIX}.png").is_file()


def test_existing_outputs_need_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _image(tmp_path / "x.png")
    out = tmp_path / "o"
    dest = out / f"x{SUFFIX}.png"
    dest.parent.mkdir()
    dest.write_bytes(b"earlier result")
    assert main(["restore", str(src), "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "output files exist" in err and "--overwrite" in err and str(dest) in err
    assert dest.read_bytes() == b"earlier result"
    assert main(["restore", str(src), "-o", str(out), "--overwrite", *FAST]) == 0
    assert Image.open(dest).size == (16, 12)


def test_same_named_inputs_into_one_folder_are_refused(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    a = _image(tmp_path / "one" / "img.png", 1)
    b = _image(tmp_path / "two" / "img.png", 2)
    out = tmp_path / "o"
    assert main(["restore", str(a), str(b), "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "same file" in err and str(a) in err and str(b) in err
    assert not out.exists()
    # Their folders keep them apart; the same file named twice is restored once.
    assert main(["restore", str(tmp_path / "one"), str(tmp_path / "two"), str(a), "-o",
                 str(out), *FAST]) == 2
    assert main(["restore", str(tmp_path), "-o", str(out), *FAST]) == 0
    assert _tree(out) == [f"one/img{SUFFIX}.png", f"two/img{SUFFIX}.png"]
    assert main(["restore", str(a), str(a), "-o", str(tmp_path / "o2"), *FAST]) == 0
    assert _tree(tmp_path / "o2") == [f"img{SUFFIX}.png"]


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path: Path, mask: int, mode: int) -> None:
    src = _image(tmp_path / "x.png")
    old = os.umask(mask)
    try:
        assert main(["restore", str(src), "-o", str(tmp_path / "o"), *FAST]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o" / f"x{SUFFIX}.png").stat().st_mode) == mode
    assert _tree(tmp_path / "o") == [f"x{SUFFIX}.png"]  # no temporary file left behind


def test_write_output_never_replaces_without_overwrite(tmp_path: Path, umask_022: None) -> None:
    dest = tmp_path / "d" / "r.png"
    write_output(dest, b"first")
    with pytest.raises(OutputExistsError):
        write_output(dest, b"second")
    assert dest.read_bytes() == b"first"
    write_output(dest, b"third", overwrite=True)
    assert dest.read_bytes() == b"third"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert _tree(tmp_path) == ["d/r.png"]


def test_globs_are_expanded(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["restore", "photos/**/*.png", "-o", "g", *FAST]) == 0
    # The part before the first wildcard is the base the tree is kept from.
    assert _tree(tmp_path / "g") == [f"a{SUFFIX}.png", f"sub/a{SUFFIX}.png"]
    assert main(["restore", "photos/*.jpg", "-o", "j", *FAST]) == 0
    assert _tree(tmp_path / "j") == [f"b{SUFFIX}.jpg"]
    assert main(["restore", "photos/*.gif", "-o", "n", *FAST]) == 2
    assert "no image files match photos/*.gif" in capsys.readouterr().err
    assert main(["restore", "missing.png", "-o", "n", *FAST]) == 2
    assert "no such file or folder: missing.png" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


def test_unreadable_image_is_skipped_and_the_rest_written(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.png").write_bytes(b"not a png")
    _image(tmp_path / "in" / "good.png")
    assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "o"), *FAST]) == 1
    captured = capsys.readouterr()
    assert "skipping" in captured.err and "bad.png" in captured.err
    assert "1 restored, 1 failed" in captured.out
    assert _tree(tmp_path / "o") == [f"good{SUFFIX}.png"]


def test_task_uses_the_shipped_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("DIFFMAMBA_MODELS_DIR", raising=False)
    src = _image(tmp_path / "rainy.png", size=(24, 20))
    assert main(["restore", str(src), "--task", "derain", "--steps", "1", "--seed", "0",
                 "-o", str(tmp_path / "o")]) == 0
    assert Image.open(tmp_path / "o" / "rainy_derain.png").size == (20, 24)
    assert "rainy_derain.png (20x24, " in capsys.readouterr().out


def test_unknown_task_names_the_shipped_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("DIFFMAMBA_MODELS_DIR", raising=False)
    src = _image(tmp_path / "x.png")
    assert main(["restore", str(src), "--task", "nope", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no model for task 'nope'" in err and "derain" in err


def test_missing_checkpoint_points_at_the_shipped_file(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "derain.safetensors").write_bytes(b"")
    src = _image(tmp_path / "x.png")
    assert main(["restore", str(src), "--checkpoint", str(models / "derain.pth")]) == 2
    assert f"(there is {models / 'derain.safetensors'})" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--device", "cpu"], ["--precision", "fp32"],
                                   ["--format", "tiff"], ["--models", "m"]])
def test_local_only_options_are_refused_with_server(tmp_path: Path, extra: list[str],
                                                    capsys: pytest.CaptureFixture) -> None:
    src = _image(tmp_path / "x.png")
    assert main(["restore", str(src), "--task", "derain", "--server", "http://127.0.0.1:9",
                 *extra]) == 2
    assert "diffmamba: error:" in capsys.readouterr().err


def test_server_needs_a_task_and_api_key_needs_a_server(tmp_path: Path) -> None:
    src = _image(tmp_path / "x.png")
    assert main(["restore", str(src), "--checkpoint", str(CKPT),
                 "--server", "http://127.0.0.1:9"]) == 2
    assert main(["restore", str(src), *FAST, "--api-key", "k"]) == 2


def test_image_suffixes_match_the_imaging_layer() -> None:
    from service.imaging.formats import _ALIASES, SUPPORTED_INPUT_FORMATS

    readable = {f".{alias}" for alias, fmt in _ALIASES.items() if fmt in SUPPORTED_INPUT_FORMATS}
    assert readable == IMAGE_SUFFIXES
