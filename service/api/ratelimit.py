"""Per-key request rate (token bucket) and concurrency caps.

A token bucket rather than a fixed window: a client may send ``burst`` requests at once after a
quiet period, but its long-run rate is ``rate_per_s``, and the wait it is told in
``Retry-After`` is exact (the time until the next token), so a well-behaved client never has to
guess. State lives in this process: with several replicas each one enforces the limits on the
traffic it receives.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: int
    tokens: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float | None = None) -> float:
        """Spend one token: 0.0 if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


@dataclass(frozen=True)
class Limits:
    """The limits of one key: its overrides from the keys file, else the settings'."""

    rate_per_s: float  # 0: no rate limit
    burst: int
    max_concurrent: int  # 0: no cap


@dataclass
class Refusal:
    error: str
    detail: str
    retry_after_s: int


class KeyLimiter:
    """Buckets and in-flight counts by key name; forgets keys that leave the keys file."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[Limits, TokenBucket]] = {}
        self._active: dict[str, int] = {}

    def forget_all_but(self, names: set[str]) -> None:
        for name in set(self._buckets) - names:
            del self._buckets[name]

    def acquire(self, name: str, limits: Limits) -> Refusal | None:
        """Admit one request of ``name`` (then :meth:`release` it), or say why not."""
        if limits.max_concurrent and self._active.get(name, 0) >= limits.max_concurrent:
            return Refusal("too_many_concurrent",
                           f"this key already has {limits.max_concurrent} request(s) in "
                           "progress; wait for one to finish", 1)
        if limits.rate_per_s:
            entry = self._buckets.get(name)
            if entry is None or entry[0] != limits:  # new key, or its limits were edited
                entry = (limits, TokenBucket(limits.rate_per_s, limits.burst))
                self._buckets[name] = entry
            wait = entry[1].take()
            if wait > 0:
                return Refusal("rate_limited",
                               f"over this key's limit of {limits.rate_per_s:g} request(s) per "
                               f"second (burst {limits.burst})", max(1, math.ceil(wait)))
        self._active[name] = self._active.get(name, 0) + 1
        return None

    def release(self, name: str) -> None:
        left = self._active.get(name, 0) - 1
        if left > 0:
            self._active[name] = left
        else:
            self._active.pop(name, None)

    def active(self, name: str) -> int:
        return self._active.get(name, 0)
