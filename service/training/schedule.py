"""Learning-rate and progressive-training schedules, both pure functions of the iteration.

Why pure functions: resuming then only needs the iteration counter to restore them exactly, and
a schedule can be inspected (``lr_at``) without stepping an optimizer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warmup to ``base_lr`` over ``warmup`` iterations, then cosine to ``min_lr`` at
    ``total`` (and ``min_lr`` after it)."""

    base_lr: float
    min_lr: float
    total: int
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.base_lr <= 0 or self.min_lr < 0 or self.min_lr > self.base_lr:
            raise ValueError(f"need 0 <= min_lr <= base_lr, base_lr > 0: {self}")
        if self.total < 1 or not 0 <= self.warmup < max(self.total, 1):
            raise ValueError(f"need total >= 1 and 0 <= warmup < total: {self}")

    def lr_at(self, step: int) -> float:
        """Learning rate used by iteration ``step`` (0-based)."""
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        span = self.total - self.warmup
        progress = min(1.0, (step - self.warmup) / span) if span > 0 else 1.0
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)


Piecewise = tuple[tuple[int, int], ...]
"""((value, from_iteration), ...) sorted by iteration, the first from 0."""


def parse_piecewise(text: str, what: str = "schedule") -> Piecewise:
    """``"64:0,96:2000,128:4000"`` -> ((64, 0), (96, 2000), (128, 4000)); ``"64"`` -> ((64, 0),)."""
    entries: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"{what}: empty entry in {text!r}")
        value_s, _, start_s = part.partition(":")
        try:
            value, start = int(value_s), int(start_s) if start_s else 0
        except ValueError:
            raise ValueError(f"{what}: {part!r} is not VALUE:ITERATION with integers") from None
        entries.append((value, start))
    return validate_piecewise(entries, what)


def validate_piecewise(entries: Sequence[Sequence[int]], what: str = "schedule") -> Piecewise:
    out = tuple((int(v), int(s)) for v, s in entries)
    if not out or out[0][1] != 0:
        raise ValueError(f"{what}: the first entry must start at iteration 0, got {list(out)}")
    starts = [s for _, s in out]
    if any(b <= a for a, b in itertools.pairwise(starts)):
        raise ValueError(f"{what}: iterations must increase strictly, got {starts}")
    if any(v < 1 for v, _ in out):
        raise ValueError(f"{what}: values must be positive, got {[v for v, _ in out]}")
    return out


def value_at(schedule: Piecewise, step: int) -> int:
    """The value in force at iteration ``step``."""
    value = schedule[0][0]
    for v, start in schedule:
        if step >= start:
            value = v
    return value


def format_piecewise(schedule: Piecewise) -> str:
    return ",".join(f"{v}:{s}" for v, s in schedule)
