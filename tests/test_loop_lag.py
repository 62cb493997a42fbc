"""The event-loop lag monitor: a blocked loop shows up as lag, an idle one does not."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.api.loop_lag import LoopLagMonitor


def _observe_while(work: float, *, block: bool, period: float = 0.01) -> list[float]:
    seen: list[float] = []

    async def main() -> None:
        monitor = LoopLagMonitor(seen.append, period=period)
        monitor.start()
        monitor.start()  # a second start while running is ignored
        await asyncio.sleep(3 * period)
        if block:
            time.sleep(work)  # the loop cannot run: its timer fires late
        else:
            await asyncio.sleep(work)
        await asyncio.sleep(3 * period)
        assert monitor.running
        await monitor.stop()
        assert not monitor.running
        await monitor.stop()  # idempotent

    asyncio.run(main())
    return seen


def test_a_blocked_loop_is_reported_as_lag() -> None:
    seen = _observe_while(0.3, block=True)
    assert seen and min(seen) >= 0.0
    assert max(seen) >= 0.25  # the sleep that spanned the block overslept by about 0.3 s


def test_an_idle_loop_shows_no_large_lag() -> None:
    seen = _observe_while(0.3, block=False)
    assert len(seen) >= 5
    assert max(seen) < 0.25  # far below the blocked case above, even on a loaded machine


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period"):
        LoopLagMonitor(lambda _: None, period=0)
