"""``diffmamba restore --server``: a real service in a subprocess does the work, and the files
are the ones a local run with the same checkpoint and seed writes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from tests.cli_server import REPO, free_port, serve_process
from tests.serving import make_models_dir


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, models dir) of a ``diffmamba serve`` process on the fixture checkpoints."""
    models = make_models_dir(tmp_path_factory.mktemp("served"))
    with serve_process(models) as base:
        yield base, models


def _photos(root: Path) -> Path:
    rng = np.random.default_rng(7)
    (root / "trip").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (17, 9, 3), dtype=np.uint8)).save(
        root / "trip" / "b.jpg", quality=90)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("task", ["derain", "denoise"])
def test_server_output_equals_local_output(served: tuple[str, Path], tmp_path: Path,
                                           task: str, capsys: pytest.CaptureFixture) -> None:
    base, models = served
    photos = _photos(tmp_path / "photos")
    common = ["restore", str(photos), "--task", task, "--seed", "11", "--steps", "2"]
    assert main([*common, "--server", base, "-o", str(tmp_path / "remote")]) == 0
    remote_out = capsys.readouterr().out
    assert main([*common, "--models", str(models), "-o", str(tmp_path / "local")]) == 0
    remote, local = _files(tmp_path / "remote"), _files(tmp_path / "local")
    assert sorted(remote) == [f"a_{task}.png", f"trip/b_{task}.jpg"]
    assert remote == local
    assert "seed 11; 2 restored, 0 failed" in remote_out
    assert f"b_{task}.jpg (9x17, " in remote_out


def test_a_remote_restore_does_not_load_torch(served: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = served
    src = _photos(tmp_path / "photos") / "a.png"
    code = ("import sys\nfrom service.cli import main\n"
            f"rc = main(['restore', {str(src)!r}, '--task', 'derain', '--server', {base!r},"
            f" '-o', {str(tmp_path / 'o')!r}])\n"
            "print(rc, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stderr
    assert (tmp_path / "o" / "a_derain.png").is_file()


def test_server_skips_a_bad_image_and_names_what_it_serves(
        served: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base, _ = served
    photos = _photos(tmp_path / "photos")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main(["restore", str(photos), "--task", "derain", "--server", base,
                 "-o", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert "skipping" in captured.err and "broken.png" in captured.err
    assert "2 restored, 1 failed" in captured.out
    assert sorted(_files(tmp_path / "o")) == ["a_derain.png", "trip/b_derain.jpg"]

    assert main(["restore", str(photos / "a.png"), "--task", "sr", "--server", base,
                 "-o", str(tmp_path / "o2")]) == 2
    assert "does not serve task 'sr' (served: denoise, derain)" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_no_service_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["restore", str(src), "--task", "derain", "--server", url]) == 2
    err = capsys.readouterr().err
    assert url in err and "connection_failed" in err
