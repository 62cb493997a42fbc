"""The ``diffmamba`` command: one subcommand per ``<name>_cmd`` module in this package.

A subcommand module provides ``add_parser(subparsers)`` and the ``run(args)`` its parser sets
as default. ``--help``, ``--version`` and a command's own ``--help`` must answer at once, while
most commands import torch (seconds). So only the command on the command line is imported and
declared in full; the others appear in the top-level help as one line from ``COMMANDS``. A
``*_cmd`` module missing from ``COMMANDS`` still works: it is imported and declared in full
every time (correct, only slower), until its name and help line are added here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

import service

PROG = "diffmamba"
MODULE_SUFFIX = "_cmd"
COMMANDS: dict[str, str] = {
    # name -> the help line its add_parser declares (tests/test_cli_startup.py compares them)
    "serve": "run the restoration HTTP service",
    "restore": "restore image files, folders or globs with a shipped model or a checkpoint",
    "inspect": "show a checkpoint's detected architecture and config",
    "convert": "convert a BasicSR .pth checkpoint to .safetensors",
    "export": "export the network to ONNX or a TensorRT engine",
    "data": "prepare training data (clean pool, degraded previews)",
    "train": "train a Diff-Mamba (two stages) or VmambaIR model, resumable",
    "eval": "PSNR/SSIM of input, classical baseline and model on evaluation pairs",
    "keys": "manage API keys (create, revoke, list)",
}
# Commands that run networks: their thread pools are sized before they start.
THREADED_COMMANDS = ("serve", "restore", "eval", "train")


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}{MODULE_SUFFIX}")


def available_commands() -> list[str]:
    """Registered commands whose module exists, then unregistered ``*_cmd`` modules."""
    present = {m.name[: -len(MODULE_SUFFIX)] for m in pkgutil.iter_modules(__path__)
               if m.name.endswith(MODULE_SUFFIX)}
    return [n for n in COMMANDS if n in present] + sorted(present - COMMANDS.keys())


def _selected(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The command on the command line: the first word that is not a top-level option (those
    take no values)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in names else None
    return None


def build_parser(argv: Sequence[str] | None = None, *, full: bool = False
                 ) -> argparse.ArgumentParser:
    """The parser for ``argv``: its command declared in full (every command with ``full``)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Mamba-based image restoration (Diff-Mamba, VmambaIR).")
    parser.add_argument("--version", action="version", version=f"{PROG} {service.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = available_commands()
    chosen = _selected(sys.argv[1:] if argv is None else argv, names)
    for name in names:
        if full or name == chosen or name not in COMMANDS:
            command_module(name).add_parser(sub)
        else:
            sub.add_parser(name, help=COMMANDS[name])
    return parser


def _needs_threads(args: argparse.Namespace) -> bool:
    """Size the pools for commands that run networks in this process (not a remote restore)."""
    if getattr(args, "server", None):
        return False
    return getattr(args, "threads", None) is not None or args.command in THREADED_COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if _needs_threads(args):
        from service.threads import apply_threads

        try:
            apply_threads(getattr(args, "threads", None))
        except ValueError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `diffmamba ... | head`: the reader left; no traceback for that
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
