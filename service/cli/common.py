"""Helpers shared by subcommands: consistent error output and device parsing.

Every subcommand imports this module while its parser is declared, so it stays light: nothing
here imports torch until a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["add_threads_option", "fail", "int_in_range", "lazy_choice", "non_negative_int",
           "positive_float", "positive_int", "resolve_device"]


def fail(message: str, code: int = 2) -> int:
    print(f"diffmamba: error: {message}", file=sys.stderr)
    return code


def resolve_device(name: str) -> torch.device:
    """``service.runtime.device.resolve_device``, imported when a command runs (it loads torch)."""
    from service.runtime.device import resolve_device as resolve

    return resolve(name)


def lazy_choice(module: str, name: str) -> Callable[[str], str]:
    """An argparse ``type`` for one of ``module.name``'s values, read when a value is given.

    For choices defined in a module that imports torch: argparse ``choices`` would be read
    while ``--help`` is formatted, and importing that module takes seconds.
    """

    def parse(value: str) -> str:
        allowed = tuple(getattr(importlib.import_module(module), name))
        if value not in allowed:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {value!r} (choose from {', '.join(map(str, allowed))})")
        return value

    return parse


def int_in_range(low: int, high: int | None = None):
    """An argparse ``type`` for an int in [low, high], with a message that names the range."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if number < low or (high is not None and number > high):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {number}")
        return number

    return parse


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {number}")
    return number


positive_int = int_in_range(1)
non_negative_int = int_in_range(0)


def add_threads_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--threads``, applied by ``main`` before the command runs (``service.threads``)."""
    parser.add_argument(
        "--threads", type=positive_int, default=None,
        help="CPU threads for torch and the scan kernel (default: DIFFMAMBA_THREADS, else the "
             "CPUs this process may use: affinity mask and cgroup quota)")
