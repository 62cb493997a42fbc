"""Admitting requests by memory: each reserves its estimated peak from a per-process budget.

Why: the batcher bounds queued *tiles*, but what kills a process is the whole-image state of the
requests it holds at once. A request reserves its estimate (service.runtime.memory) before it
decodes; when the budget is busy it waits, first come first served, up to its deadline; a request
that could not fit even in an idle process is refused at once (``TooLargeForMemory``, 413).

The budget covers the process's resident memory: ``baseline`` is what it holds with no request
(the models, the runtime, the network passes' working set) and requests share the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from service.runtime.memory import MB


class AdmissionError(Exception):
    """Base of admission failures; each maps to one HTTP answer."""


class TooLargeForMemory(AdmissionError):
    """The request's estimate exceeds what the budget leaves for requests: never admissible."""

    def __init__(self, needed: int, available: int, budget: int) -> None:
        super().__init__(
            f"restoring this image needs an estimated {needed / MB:,.0f} MB of memory; this "
            f"server has {available / MB:,.0f} MB for requests (memory_budget_mb "
            f"{budget / MB:,.0f}); send a smaller image"
        )
        self.needed, self.available, self.budget = needed, available, budget


class AdmissionTimeout(AdmissionError):
    """The deadline passed while the request waited for memory held by other requests."""


@dataclass
class _Waiter:
    nbytes: int
    future: asyncio.Future[None]


class MemoryAdmission:
    """A byte semaphore over ``budget - baseline``, FIFO, with deadlines. Event-loop only."""

    def __init__(self, budget: int, baseline: int = 0) -> None:
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        self.budget = int(budget)
        self.baseline = max(0, int(baseline))
        self._reserved = 0
        self._active = 0
        self._waiters: deque[_Waiter] = deque()
        self.admitted = 0
        self.refused = 0
        self.timed_out = 0

    @property
    def available(self) -> int:
        """Bytes requests may hold in all."""
        return max(0, self.budget - self.baseline)

    @property
    def reserved(self) -> int:
        return self._reserved

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def stats(self) -> dict[str, int]:
        return {
            "budget_bytes": self.budget,
            "baseline_bytes": self.baseline,
            "available_bytes": self.available,
            "reserved_bytes": self._reserved,
            "active": self._active,
            "waiting": len(self._waiters),
            "admitted": self.admitted,
            "refused": self.refused,
            "timed_out": self.timed_out,
        }

    def check(self, nbytes: int) -> None:
        """Raise ``TooLargeForMemory`` if ``nbytes`` could never be admitted."""
        if nbytes > self.available:
            self.refused += 1
            raise TooLargeForMemory(nbytes, self.available, self.budget)

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, deadline: float | None = None) -> AsyncIterator[float]:
        """Hold ``nbytes`` of the budget for the block; yields the seconds spent waiting.

        ``deadline`` is a ``time.monotonic()`` value; waiting past it raises
        ``AdmissionTimeout``. Cancelling a waiting caller takes it out of the line.
        """
        nbytes = max(0, int(nbytes))
        self.check(nbytes)
        start = time.monotonic()
        if not self._waiters and self._reserved + nbytes <= self.available:
            self._grant(nbytes)
        else:
            await self._wait(nbytes, deadline)
        waited = time.monotonic() - start
        try:
            yield waited
        finally:
            self._reserved -= nbytes
            self._active -= 1
            self._wake()

    def _grant(self, nbytes: int) -> None:
        self._reserved += nbytes
        self._active += 1
        self.admitted += 1

    async def _wait(self, nbytes: int, deadline: float | None) -> None:
        waiter = _Waiter(nbytes, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        started = time.monotonic()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                # Granted just as the wait ended: give it back.
                self._reserved -= nbytes
                self._active -= 1
                self.admitted -= 1
            else:
                waiter.future.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            self._wake()
            if isinstance(exc, asyncio.TimeoutError):
                self.timed_out += 1
                raise AdmissionTimeout(
                    f"waited {time.monotonic() - started:.1f} s for "
                    f"memory held by other requests ({self._reserved / MB:,.0f} of "
                    f"{self.available / MB:,.0f} MB reserved) until the request's deadline"
                ) from None
            raise

    def _wake(self) -> None:
        """Grant waiters in arrival order while the head fits (no overtaking: no starvation)."""
        while self._waiters and self._reserved + self._waiters[0].nbytes <= self.available:
            waiter = self._waiters.popleft()
            if waiter.future.done():
                continue
            self._grant(waiter.nbytes)
            waiter.future.set_result(None)
