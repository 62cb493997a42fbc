"""The ``diffmamba`` command: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from service.cli import (
    convert_cmd,
    data_cmd,
    eval_cmd,
    export_cmd,
    inspect_cmd,
    restore_cmd,
    serve_cmd,
    train_cmd,
)

SUBCOMMANDS = (
    serve_cmd, restore_cmd, inspect_cmd, convert_cmd, export_cmd, data_cmd, train_cmd,
    eval_cmd,
)
# Commands that run networks: their thread pools are sized before they start.
THREADED_COMMANDS = ("serve", "restore", "eval", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffmamba", description="Mamba-based image restoration (Diff-Mamba, VmambaIR)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "threads", None) is not None or args.command in THREADED_COMMANDS:
        from service.threads import apply_threads

        try:
            apply_threads(getattr(args, "threads", None))
        except ValueError as exc:
            print(f"diffmamba: {exc}", file=sys.stderr)
            return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
