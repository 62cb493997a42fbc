"""Event-loop lag: how late the loop runs a callback it scheduled, as a Prometheus histogram.

Every heavy step of a request runs in a worker thread, so the loop should only ever schedule;
when probes or small requests are slow anyway, this tells an operator which side is to blame.
High lag means the loop itself did not get to run (CPU contention from other threads or
processes, or something holding the GIL); low lag with slow ``/healthz`` answers points at the
network or the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

DEFAULT_PERIOD_S = 0.1


class LoopLagMonitor:
    """Sleeps ``period`` seconds at a time on the running loop and reports each oversleep.

    The sleep's own timer resolution is well under a millisecond, so an oversleep of more than
    a few milliseconds is time the loop could not run: a ``/healthz`` arriving then waits as long.
    """

    def __init__(self, observe: Callable[[float], None], period: float = DEFAULT_PERIOD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not period > 0:
            raise ValueError(f"period must be > 0, got {period!r}")
        self.observe, self.period, self.clock = observe, period, clock
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start on the running loop; a second call while running does nothing."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="loop-lag-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            start = self.clock()
            await asyncio.sleep(self.period)
            self.observe(max(0.0, self.clock() - start - self.period))
