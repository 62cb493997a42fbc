"""Helpers shared by subcommands: consistent error output and device parsing."""

from __future__ import annotations

import sys

import torch


def fail(message: str, code: int = 2) -> int:
    print(f"diffmamba: error: {message}", file=sys.stderr)
    return code


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but torch sees no GPU (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: {exc}") from exc
