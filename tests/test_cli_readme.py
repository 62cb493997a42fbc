"""The README's ``diffmamba restore`` examples run as written, in order, on small images.

Every line of a README code block that starts with ``diffmamba restore`` (and the Command line
section's ``--version`` and ``inspect`` lines) is split like a shell would (quotes, comments)
and run in a folder that holds the files the examples name: small photos and the repository's
``models/``. Examples that talk to a service get a live server's address instead of
``http://127.0.0.1:8000`` (a uvicorn server on a free port, serving the shipped derain model;
``tests/test_cli_server.py`` runs ``diffmamba serve`` as a separate process).
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from tests.serving import LiveServer

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCUMENTED_SERVER = "http://127.0.0.1:8000"
CHEAP = ("diffmamba --version", "diffmamba inspect ")


def _code_lines(text: str) -> list[str]:
    """Lines inside ``` blocks, continuation backslashes joined."""
    lines: list[str] = []
    inside = False
    pending = ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def readme_examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Command line"):]
    section = section[: section.index("\n## ", 1)]
    restores = [ln for ln in _code_lines(text) if ln.startswith("diffmamba restore ")]
    cheap = [ln for ln in _code_lines(section) if ln.startswith(CHEAP)]
    return cheap + restores


def _photo(path: Path, seed: int, size: tuple[int, int] = (20, 28)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _served_models(root: Path) -> Path:
    """The shipped derain model alone, so the server starts quickly."""
    models = root / ".served-models"
    models.mkdir()
    for name in ("derain.safetensors", "derain.json"):
        if (REPO / "models" / name).is_file():
            (models / name).symlink_to(REPO / "models" / name)
    return models


def test_the_readme_has_restore_examples() -> None:
    examples = readme_examples()
    assert sum(ln.startswith("diffmamba restore ") for ln in examples) >= 5
    assert any("--version" in ln for ln in examples)


def test_readme_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("DIFFMAMBA_MODELS_DIR", raising=False)
    _photo(tmp_path / "rainy.png", 0)
    _photo(tmp_path / "noisy.jpg", 1)
    _photo(tmp_path / "photos" / "a.jpg", 2)
    _photo(tmp_path / "photos" / "trip" / "b.jpg", 3)
    _photo(tmp_path / "photos" / "trip" / "c.png", 4)
    (tmp_path / "models").symlink_to(REPO / "models", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    with contextlib.ExitStack() as stack:
        server: str | None = None
        for line in readme_examples():
            if DOCUMENTED_SERVER in line:
                server = server or stack.enter_context(
                    LiveServer(_served_models(tmp_path), warmup=False)).url
                line = line.replace(DOCUMENTED_SERVER, server)
            argv = shlex.split(line, comments=True)
            assert argv[0] == "diffmamba"
            try:
                code = main(argv[1:])
            except SystemExit as exc:  # --version exits through argparse
                code = exc.code
            captured = capsys.readouterr()
            assert code == 0, f"{line}\n{captured.out}\n{captured.err}"
    # What the examples promise: names with the task suffix, trees kept, formats chosen.
    assert (tmp_path / "restored" / "rainy_derain.png").is_file()
    assert (tmp_path / "out" / "noisy_denoise.jpg").is_file()
    assert (tmp_path / "restored" / "trip" / "c_deblur.png").is_file()
    assert (tmp_path / "out" / "trip" / "b_derain.png").is_file()
    assert (tmp_path / "clean" / "rainy.png").is_file()
    with Image.open(tmp_path / "large" / "rainy_sr.png") as upscaled:  # 28x20 in, x4 out
        assert upscaled.size == (4 * 28, 4 * 20)
    assert (tmp_path / "served" / "trip" / "b_derain.jpg").is_file()
    leftovers = [p for p in tmp_path.rglob(".*")
                 if "models" not in p.parts and ".served-models" not in p.parts]
    assert leftovers == []  # no temporary files
