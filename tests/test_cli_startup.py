"""``diffmamba --help``/``--version`` stay light: no torch, only the chosen command's module.

How fast that is belongs to ``bench/cli_startup.py``; these tests check the imports that make
it fast, and that the lazy registration declares the same commands as the full one.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

import service
from service import cli

REPO = Path(__file__).resolve().parent.parent
LIGHT_HELP = [["--help"], ["--version"], ["restore", "--help"], ["serve", "--help"],
              ["inspect", "--help"], ["convert", "--help"], ["keys", "--help"]]


def _modules_after(argv: list[str]) -> dict[str, object]:
    """Run ``main(argv)`` in a fresh interpreter; report its exit and what it imported."""
    code = (
        "import json, sys\n"
        "from service.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    code = e.code\n"
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules,\n"
        "    'cmds': sorted(m for m in sys.modules if m.endswith('_cmd'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", LIGHT_HELP, ids=" ".join)
def test_help_and_version_do_not_import_torch(argv: list[str]) -> None:
    seen = _modules_after(argv)
    assert seen["code"] == 0
    assert seen["torch"] is False
    chosen = [f"service.cli.{argv[0]}_cmd"] if not argv[0].startswith("-") else []
    unregistered = [f"service.cli.{n}_cmd" for n in cli.available_commands()
                    if n not in cli.COMMANDS]
    assert seen["cmds"] == sorted(chosen + unregistered)


def test_version_is_the_installed_distributions() -> None:
    done = subprocess.run([sys.executable, "-m", "service.cli", "--version"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == f"diffmamba {service.__version__}"
    assert service.__version__ == importlib.metadata.version("diffmamba-service")


def test_registered_help_lines_match_the_modules() -> None:
    """The one-line help shown without importing a command is the one it declares itself."""
    full = cli.build_parser([], full=True)
    sub = next(a for a in full._actions if a.dest == "command")
    declared = {a.dest: a.help for a in sub._choices_actions}
    for name in cli.available_commands():
        if name in cli.COMMANDS:
            assert declared[name] == cli.COMMANDS[name], name
    assert list(declared) == cli.available_commands()


def test_an_unregistered_command_module_still_works(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delitem(cli.COMMANDS, "inspect")
    assert "inspect" in cli.available_commands()
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "show a checkpoint's detected architecture" in capsys.readouterr().out
    ckpt = REPO / "tests" / "fixtures" / "diffmamba" / "tiny_withbias_checkpoint.pth"
    assert cli.main(["inspect", str(ckpt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "diffmamba"


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["restor", "x.png"])
    assert exc.value.code == 2
    assert "invalid choice: 'restor'" in capsys.readouterr().err
