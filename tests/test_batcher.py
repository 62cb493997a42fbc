"""Dynamic batcher: grouping, fairness, ownership, padding, deadlines, cancellation, shutdown.

Plain ``asyncio.run`` per test (no plugin). Timing-sensitive waits are replaced by a gate
(``threading.Event``) that holds the network pass, so queue states are deterministic.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

import pytest
import torch

from service.batching import (
    BatcherClosedError,
    BatcherError,
    BatchExecutionError,
    DeadlineExceededError,
    DynamicBatcher,
    QueueFullError,
)

S4 = (6, 4, 4)
S8 = (6, 8, 8)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a test coroutine with a hard cap, so a broken batcher fails instead of hanging."""
    return asyncio.run(asyncio.wait_for(coro, 5.0))


def item(i: int, shape: tuple[int, ...] = S4) -> torch.Tensor:
    """An input whose every value is ``i``: identifies its owner in the batch and output."""
    return torch.full(shape, float(i))


def expected(i: int, t: float, shape: tuple[int, ...] = S4) -> torch.Tensor:
    return torch.full((3, *shape[1:]), 2.0 * i + t)


class Network:
    """A ``run_batch`` whose output encodes its input (out = x[:, :3] * 2 + t), recording calls.

    ``gate`` (when given) holds every pass until it is set; ``fail_on`` makes a pass whose batch
    contains that value raise ``RuntimeError("boom")``.
    """

    def __init__(self, gate: threading.Event | None = None, fail_on: float | None = None) -> None:
        self.gate = gate
        self.fail_on = fail_on
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.threads: list[threading.Thread] = []
        self._active = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self._active += 1
            self.max_concurrent = max(self.max_concurrent, self._active)
        try:
            self.threads.append(threading.current_thread())
            self.calls.append((x.clone(), t.clone()))
            if self.gate is not None and not self.gate.wait(3.0):
                raise TimeoutError("gate never opened (run_batch on the event loop thread?)")
            if self.fail_on is not None and bool((x == self.fail_on).any()):
                raise RuntimeError("boom")
            return x[:, :3] * 2 + t.view(-1, 1, 1, 1)
        finally:
            with self._lock:
                self._active -= 1

    @property
    def sizes(self) -> list[int]:
        return [x.shape[0] for x, _ in self.calls]

    def seen(self) -> set[float]:
        """Item ids (values) that reached the network."""
        return {float(x[i].flatten()[0]) for x, _ in self.calls for i in range(x.shape[0])}


class RecordingObserver:
    def __init__(self) -> None:
        self.enqueues: list[int] = []
        self.batches: list[tuple[int, int, list[float], float]] = []
        self.drops: list[tuple[str, int]] = []

    def on_enqueue(self, depth: int) -> None:
        self.enqueues.append(depth)

    def on_batch(
        self, size: int, padded_size: int, queue_waits: list[float], run_seconds: float
    ) -> None:
        self.batches.append((size, padded_size, queue_waits, run_seconds))

    def on_drop(self, reason: str, count: int) -> None:
        self.drops.append((reason, count))


async def wait_until(predicate: Any, timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


# ---------------------------------------------------------------------- grouping


def test_concurrent_requests_share_one_batch_and_results_go_to_owners() -> None:
    net, obs = Network(), RecordingObserver()

    async def main() -> list[torch.Tensor]:
        async with DynamicBatcher(net, max_queue_delay_ms=50, observer=obs) as b:
            return await asyncio.gather(*(b.submit(item(i), 0.1 * i) for i in range(6)))

    outs = run(main())
    assert net.sizes == [6]
    for i, out in enumerate(outs):
        torch.testing.assert_close(out, expected(i, 0.1 * i))
    # stacked in arrival order, one timestep per row
    x, t = net.calls[0]
    assert [float(v) for v in x[:, 0, 0, 0]] == [0, 1, 2, 3, 4, 5]
    torch.testing.assert_close(t, torch.tensor([0.1 * i for i in range(6)]))
    assert t.dtype == torch.float32
    assert obs.enqueues == [1, 2, 3, 4, 5, 6]
    (size, padded, waits, run_s) = obs.batches[0]
    assert (size, padded, len(waits)) == (6, 6, 6) and run_s >= 0


def test_many_requests_many_tiles_each_result_to_its_owner() -> None:
    net = Network()

    async def request(b: DynamicBatcher, r: int, tiles: int) -> None:
        ids = [100 * r + k for k in range(tiles)]
        ts = [float(r) + 0.01 * k for k in range(tiles)]
        outs = await b.submit_many([item(i) for i in ids], ts)
        for i, t, out in zip(ids, ts, outs, strict=True):
            torch.testing.assert_close(out, expected(i, t))

    async def main() -> None:
        async with DynamicBatcher(net, max_batch_size=4, max_queue_delay_ms=5) as b:
            await asyncio.gather(*(request(b, r, tiles) for r, tiles in enumerate([3, 1, 5, 2])))

    run(main())
    assert sum(net.sizes) == 11 and max(net.sizes) <= 4
    # rows enter the network in arrival order (requests in gather order, tiles in order)
    order = [float(x[i, 0, 0, 0]) for x, _ in net.calls for i in range(x.shape[0])]
    assert order == [0, 1, 2, 100, 200, 201, 202, 203, 204, 300, 301]


def test_max_batch_size_respected() -> None:
    net = Network()

    async def main() -> None:
        async with DynamicBatcher(net, max_batch_size=4, max_queue_delay_ms=20) as b:
            await b.submit_many([item(i) for i in range(10)], [0.0] * 10)

    run(main())
    assert net.sizes == [4, 4, 2]


def test_shapes_never_mixed_and_oldest_shape_goes_first() -> None:
    gate = threading.Event()
    net = Network(gate)

    async def main() -> None:
        async with DynamicBatcher(net, max_batch_size=3, max_queue_delay_ms=10) as b:
            first = asyncio.create_task(b.submit(item(0), 0.0))  # runs alone, held by gate
            await wait_until(lambda: b.in_flight == 1)
            # while it runs: one S8 item (oldest), then a full batch of S4, then another S8
            a = asyncio.create_task(b.submit(item(1, S8), 0.0))
            await asyncio.sleep(0)
            c = asyncio.create_task(b.submit_many([item(i) for i in (2, 3, 4)], [0.0] * 3))
            await asyncio.sleep(0)
            d = asyncio.create_task(b.submit(item(5, S8), 0.0))
            await wait_until(lambda: b.queue_depth == 5)
            await asyncio.sleep(0.02)  # S8's head has now waited past the delay: both ready
            gate.set()
            await asyncio.gather(first, a, c, d)
            torch.testing.assert_close(a.result(), expected(1, 0.0, S8))

    run(main())
    shapes = [tuple(x.shape) for x, _ in net.calls]
    assert shapes == [(1, *S4), (2, *S8), (3, *S4)]  # S8 head is older than the full S4 batch


def test_lone_item_flushed_after_max_queue_delay() -> None:
    net, obs = Network(), RecordingObserver()

    async def main() -> float:
        async with DynamicBatcher(net, max_batch_size=8, max_queue_delay_ms=40, observer=obs) as b:
            t0 = time.monotonic()
            out = await b.submit(item(7), 0.5)
            torch.testing.assert_close(out, expected(7, 0.5))
            return time.monotonic() - t0

    latency = run(main())
    assert 0.04 <= latency < 1.0
    assert obs.batches[0][2][0] >= 0.04  # its queue wait was the delay


# ---------------------------------------------------------------------- backpressure


def test_queue_full_rejects_immediately_with_retry_after() -> None:
    gate = threading.Event()
    net, obs = Network(gate), RecordingObserver()

    async def main() -> None:
        async with DynamicBatcher(
            net, max_batch_size=2, max_queue_delay_ms=1, max_queue_size=4, observer=obs
        ) as b:
            first = asyncio.create_task(b.submit(item(0), 0.0))
            await wait_until(lambda: b.in_flight == 1)
            queued = asyncio.create_task(b.submit_many([item(i) for i in (1, 2, 3)], [0.0] * 3))
            await wait_until(lambda: b.queue_depth == 3)
            with pytest.raises(QueueFullError) as info:  # group of 2 checked as a whole
                await b.submit_many([item(8), item(9)], [0.0, 0.0])
            assert info.value.retry_after_s > 0
            assert isinstance(info.value, BatcherError)
            assert b.queue_depth == 3
            last = asyncio.create_task(b.submit(item(4), 0.0))  # exactly fills the queue
            await wait_until(lambda: b.queue_depth == 4)
            with pytest.raises(QueueFullError):
                await b.submit(item(10), 0.0)
            gate.set()
            await asyncio.gather(first, queued, last)
            assert b.stats()["rejected"] == 3

    run(main())
    assert net.seen() == {0, 1, 2, 3, 4}
    assert ("queue_full", 2) in obs.drops and ("queue_full", 1) in obs.drops


# ---------------------------------------------------------------------- deadlines


def test_deadline_passes_while_queued_behind_slow_batch() -> None:
    gate = threading.Event()
    net, obs = Network(gate), RecordingObserver()

    async def main() -> None:
        async with DynamicBatcher(net, max_queue_delay_ms=1, observer=obs) as b:
            slow = asyncio.create_task(b.submit(item(0), 0.0))
            await wait_until(lambda: b.in_flight == 1)
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceededError):  # raised while the gate is still shut
                await b.submit(item(1), 0.0, deadline=t0 + 0.03)
            assert 0.03 <= time.monotonic() - t0 < 1.0
            assert b.queue_depth == 0
            gate.set()
            await slow
            assert b.stats()["expired"] == 1

    run(main())
    assert net.seen() == {0}
    assert obs.drops == [("deadline", 1)]


def test_expired_item_never_reaches_network_even_if_timer_is_late() -> None:
    net = Network()

    async def main() -> None:
        async with DynamicBatcher(net, max_queue_delay_ms=0) as b:
            with pytest.raises(DeadlineExceededError):  # already past at submit
                await b.submit(item(1), 0.0, deadline=time.monotonic() - 1)
            late = asyncio.create_task(b.submit(item(2), 0.0, deadline=time.monotonic() + 0.01))
            await asyncio.sleep(0)  # enqueued
            time.sleep(0.03)  # block the loop past the deadline: the batch-time check must catch it
            with pytest.raises(DeadlineExceededError):
                await late
            assert await b.submit(item(3), 0.0, deadline=time.monotonic() + 5) is not None

    run(main())
    assert net.seen() == {3}


# ---------------------------------------------------------------------- cancellation


def test_cancelled_awaiter_items_never_run() -> None:
    gate = threading.Event()
    net, obs = Network(gate), RecordingObserver()

    async def main() -> None:
        async with DynamicBatcher(net, max_queue_delay_ms=1, observer=obs) as b:
            slow = asyncio.create_task(b.submit(item(0), 0.0))
            await wait_until(lambda: b.in_flight == 1)
            doomed = asyncio.create_task(b.submit_many([item(i) for i in (1, 2, 3)], [0.0] * 3))
            await wait_until(lambda: b.queue_depth == 3)
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            assert b.queue_depth == 0
            gate.set()
            await slow
            torch.testing.assert_close(await b.submit(item(4), 0.0), expected(4, 0.0))

    run(main())
    assert net.seen() == {0, 4}
    assert ("cancelled", 3) in obs.drops


def test_cancelled_while_running_result_discarded_quietly() -> None:
    gate = threading.Event()
    net = Network(gate)

    async def main() -> None:
        async with DynamicBatcher(net, max_queue_delay_ms=1) as b:
            running = asyncio.create_task(b.submit(item(0), 0.0))
            await wait_until(lambda: b.in_flight == 1)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            gate.set()
            await wait_until(lambda: b.in_flight == 0)
            torch.testing.assert_close(await b.submit(item(1), 0.0), expected(1, 0.0))
            assert b.stats()["batches"] == 2

    run(main())


# ---------------------------------------------------------------------- failures


def test_failing_batch_fails_only_its_items_and_next_batch_succeeds() -> None:
    net, obs = Network(fail_on=666.0), RecordingObserver()

    async def main() -> None:
        async with DynamicBatcher(net, max_queue_delay_ms=10, observer=obs) as b:
            results = await asyncio.gather(
                b.submit(item(666), 0.0),
                b.submit(item(1), 0.0),  # same shape: same batch, fails with it
                b.submit(item(2, S8), 0.0),  # other shape: own batch, succeeds
                return_exceptions=True,
            )
            for err in results[:2]:
                assert isinstance(err, BatchExecutionError)
                assert "RuntimeError: boom" in str(err)
                assert isinstance(err.cause, RuntimeError) and err.__cause__ is err.cause
            assert results[0] is not results[1]  # one exception object per awaiter
            torch.testing.assert_close(results[2], expected(2, 0.0, S8))
            torch.testing.assert_close(await b.submit(item(3), 0.5), expected(3, 0.5))
            stats = b.stats()
            assert (stats["failed_batches"], stats["failed"], stats["batches"]) == (1, 2, 2)

    run(main())
    assert ("error", 2) in obs.drops


def test_wrong_output_shape_is_a_batch_execution_error() -> None:
    async def main() -> None:
        async with DynamicBatcher(lambda x, t: x[:1], max_queue_delay_ms=5) as b:
            results = await asyncio.gather(
                b.submit(item(1), 0.0), b.submit(item(2), 0.0), return_exceptions=True
            )
            assert all(isinstance(r, BatchExecutionError) for r in results)
            assert "ValueError" in str(results[0])

    run(main())


def test_group_is_all_or_nothing_on_failure() -> None:
    net = Network(fail_on=666.0)

    async def main() -> None:
        # the S4 pair fills a batch and fails at once; the S8 tile would wait 10 s for company
        async with DynamicBatcher(net, max_batch_size=2, max_queue_delay_ms=10_000) as b:
            with pytest.raises(BatchExecutionError):
                await b.submit_many([item(666), item(1), item(2, S8)], [0.0, 0.0, 0.0])
            assert b.queue_depth == 0  # the S8 sibling was dropped, not left queued
            assert b.stats()["cancelled"] == 1

    run(main())
    assert net.seen() == {666, 1}


# ---------------------------------------------------------------------- padding


def test_pads_to_supported_batch_size_and_discards_pads() -> None:
    net, obs = Network(), RecordingObserver()

    async def main() -> list[torch.Tensor]:
        async with DynamicBatcher(
            net, max_queue_delay_ms=5, batch_sizes=[1, 2, 4, 8], observer=obs
        ) as b:
            return await b.submit_many([item(i) for i in (1, 2, 3)], [0.1, 0.2, 0.3])

    outs = run(main())
    assert len(outs) == 3
    for i, out in zip((1, 2, 3), outs, strict=True):
        torch.testing.assert_close(out, expected(i, 0.1 * i))
    x, t = net.calls[0]
    assert x.shape[0] == 4
    torch.testing.assert_close(x[3], x[2])  # pad repeats the last item
    assert float(t[3]) == pytest.approx(0.3)
    assert obs.batches[0][:2] == (3, 4) and len(obs.batches[0][2]) == 3


def test_batch_sizes_must_cover_max_batch_size() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(lambda x, t: x, max_batch_size=8, batch_sizes=[1, 2, 4])
    with pytest.raises(ValueError):
        DynamicBatcher(lambda x, t: x, max_batch_size=2, batch_sizes=[2, 1])


# ---------------------------------------------------------------------- lifecycle, threads


def test_stop_drains_queued_work_then_rejects() -> None:
    net = Network()

    async def main() -> None:
        b = DynamicBatcher(net, max_queue_delay_ms=10_000)  # would wait 10 s without draining
        b.start()
        tasks = [asyncio.create_task(b.submit(item(i), 0.0)) for i in range(3)]
        await wait_until(lambda: b.queue_depth == 3)
        t0 = time.monotonic()
        await b.stop(drain=True)
        assert time.monotonic() - t0 < 1.0
        for i, task in enumerate(tasks):
            torch.testing.assert_close(task.result(), expected(i, 0.0))
        with pytest.raises(BatcherClosedError):
            await b.submit(item(9), 0.0)
        await b.stop()  # idempotent

    run(main())
    assert net.sizes == [3]


def test_stop_without_drain_fails_queued_work() -> None:
    net = Network()

    async def main() -> None:
        b = DynamicBatcher(net, max_queue_delay_ms=10_000)
        task = asyncio.create_task(b.submit(item(1), 0.0))
        await wait_until(lambda: b.queue_depth == 1)
        await b.stop(drain=False)
        with pytest.raises(BatcherClosedError):
            await task

    run(main())
    assert net.calls == []


def test_stop_timeout_fails_running_batch() -> None:
    gate = threading.Event()
    net = Network(gate)

    async def main() -> None:
        b = DynamicBatcher(net, max_queue_delay_ms=1)
        task = asyncio.create_task(b.submit(item(1), 0.0))
        await wait_until(lambda: b.in_flight == 1)
        await b.stop(drain=True, timeout=0.02)
        with pytest.raises(BatcherClosedError):
            await task
        gate.set()

    run(main())


def test_run_batch_runs_off_the_event_loop_one_pass_at_a_time() -> None:
    gate = threading.Event()
    net = Network(gate)

    async def main() -> None:
        async with DynamicBatcher(net, name="unet", max_queue_delay_ms=1) as b:
            tasks = [asyncio.create_task(b.submit(item(i, s), 0.0)) for i, s in [(1, S4), (2, S8)]]
            # if run_batch blocked the loop, this coroutine could never open the gate
            await wait_until(lambda: b.in_flight == 1)
            gate.set()
            await asyncio.gather(*tasks)

    run(main())
    loop_thread = threading.main_thread()
    assert net.threads and all(th is not loop_thread for th in net.threads)
    assert all(th.name.startswith("batcher-unet") for th in net.threads)
    assert net.max_concurrent == 1 and len(net.calls) == 2


def test_observer_errors_do_not_break_serving() -> None:
    class Broken:
        def on_enqueue(self, depth: int) -> None:
            raise RuntimeError("metrics down")

        on_batch = on_drop = on_enqueue  # type: ignore[assignment]

    async def main() -> torch.Tensor:
        async with DynamicBatcher(Network(), max_queue_delay_ms=1, observer=Broken()) as b:
            return await b.submit(item(1), 0.0)

    torch.testing.assert_close(run(main()), expected(1, 0.0))


def test_step_timing_splits_queue_and_compute() -> None:
    from service.batching import StepTiming

    def slow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return x[:, :3]

    async def scenario() -> StepTiming:
        timing = StepTiming()
        async with DynamicBatcher(slow, max_batch_size=4, max_queue_delay_ms=30) as b:
            await b.submit_many([torch.zeros(6, 8, 8)] * 2, [1.0, 1.0], timing=timing)
        return timing

    timing = asyncio.run(scenario())
    assert 0.02 <= timing.queue_s < 0.5
    assert 0.045 <= timing.compute_s < 0.5
