"""Asyncio dynamic batcher in the manner of Triton's: group same-shape items, run them at once.

Why: a diffusion request walks S steps and at each step submits all its tiles; running tiles of
*all* concurrent requests together (any timestep, one per row) keeps the accelerator busy at
small latency cost. The design choices, in short:

* One worker task per batcher forms batches; the network pass runs in a worker thread (a
  dedicated single-thread executor by default), so the event loop never blocks and passes of
  one model never overlap. One batch is in flight at a time; items keep queueing meanwhile.
* Items are grouped by ``(shape, dtype, device)``. A group is *ready* when it holds
  ``max_batch_size`` items or its oldest item has waited ``max_queue_delay_ms`` (or the batcher
  is draining). Among ready groups the one whose oldest item is oldest goes first (FIFO across
  shapes); within a group items are stacked in arrival order.
* Deadlines are enforced by a loop timer per item (so expiry does not depend on other traffic)
  and re-checked when a batch is formed; an expired item never reaches the network. Once a
  batch is running its items get their results even if the deadline passes meanwhile.
* Cancelling an awaiter removes its queued items; results of its running items are discarded.
* A failing ``run_batch`` fails only the items of that batch (``BatchExecutionError``).
* A request with more items than the queue holds submits through a :class:`BatchStream`: its
  items wait in the stream and enter the queue in windows, each active stream holding at most
  an equal share of ``max_queue_size`` and refilled round-robin as batches free slots. So the
  queue bounds queued work, not image size, and a large request cannot starve a small one.
  Every open stream needs a slot: one more stream than ``max_queue_size`` is ``QueueFullError``.
* An item may be a :class:`LazyInput`: its tensor is made, and its output consumed, in the
  executor thread around the pass, so a request's whole-image state never has to exist as a
  list of every tile's input and output at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from service.batching.errors import (
    BatcherClosedError,
    BatchExecutionError,
    DeadlineExceededError,
    QueueFullError,
)
from service.batching.observer import (
    DROP_CANCELLED,
    DROP_CLOSED,
    DROP_DEADLINE,
    DROP_ERROR,
    DROP_QUEUE_FULL,
    BatcherObserver,
    NullObserver,
)

__all__ = ["BatchStream", "DynamicBatcher", "LazyInput", "RunBatch"]

logger = logging.getLogger(__name__)

RunBatch = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``run_batch(x (B, C, H, W), t (B,) float32) -> (B, C_out, sH, sW)``, s the ``output_scale``
(a ×4 network); blocking, thread-safe
with respect to the event loop (it is only ever called from the batcher's executor)."""

_Key = tuple[tuple[int, ...], torch.dtype, torch.device]
_CPU = torch.device("cpu")


@dataclass(frozen=True, eq=False)
class LazyInput:
    """An item whose input is made when its batch runs, and whose output is consumed there.

    ``make()`` returns the input tensor of ``shape`` (``dtype``, ``device``); ``consume(out)``,
    when given, takes the output row and its return value becomes the item's result. Both run
    in the batcher's executor thread, never on the event loop, one item after another.
    """

    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]
    consume: Callable[[torch.Tensor], Any] | None = None
    dtype: torch.dtype = torch.float32
    device: torch.device = _CPU

    def dim(self) -> int:
        return len(self.shape)


Input = torch.Tensor | LazyInput

_COUNTERS = (
    "batches",  # successful network passes
    "items",  # real items delivered by them
    "padded_items",  # pad rows sent to the network (discarded)
    "failed_batches",
    "failed",  # items of failed batches
    "rejected",  # queue full at submit
    "expired",  # deadline passed before running
    "cancelled",  # awaiter gone while queued
    "closed_dropped",  # abandoned by stop
)
_EWMA_ALPHA = 0.2  # weight of the newest batch in the run-time average used for Retry-After


@dataclass(eq=False)  # identity equality: deque.remove must remove exactly this item
class _Item:
    x: Input
    t: float
    key: _Key
    future: asyncio.Future[Any]
    enqueued_at: float
    deadline: float | None
    seq: int
    queued: bool = True
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    started_at: float | None = None
    finished_at: float | None = None
    stream: BatchStream | None = field(default=None, repr=False)
    pending: bool = False  # waiting in its stream for a queue slot


@dataclass
class StepTiming:
    """Where a request's time went in the batcher, for its ``Server-Timing`` header.

    ``queue_s`` sums, per submitted group, the wait until its first item started;
    ``compute_s`` the span from that start until its last item finished.
    """

    queue_s: float = 0.0
    compute_s: float = 0.0

    def add(self, items: Sequence[_Item]) -> None:
        started = [it.started_at for it in items if it.started_at is not None]
        finished = [it.finished_at for it in items if it.finished_at is not None]
        if not started or not finished:
            return
        self.queue_s += max(0.0, min(started) - min(it.enqueued_at for it in items))
        self.compute_s += max(0.0, max(finished) - min(started))


class BatchStream:
    """One request's share of a batcher's queue: its items enter the queue in windows.

    Open with ``DynamicBatcher.open_stream()`` and use as a context manager; ``submit_many``
    behaves like the batcher's (results in input order, all-or-nothing, deadlines,
    cancellation) but never fails for want of queue room: items beyond the stream's share wait
    in the stream (back-pressure) until batches free slots.
    """

    def __init__(self, batcher: DynamicBatcher) -> None:
        self._batcher = batcher
        self._pending: deque[_Item] = deque()
        self.queued = 0  # items of this stream in the batcher's queue
        self.closed = False

    @property
    def pending(self) -> int:
        """Items submitted but still waiting in the stream for a queue slot."""
        return len(self._pending)

    async def submit_many(
        self,
        xs: Sequence[Input],
        ts: Sequence[float | torch.Tensor],
        *,
        deadline: float | None = None,
        timing: StepTiming | None = None,
    ) -> list[Any]:
        if self.closed:
            raise RuntimeError("the stream is closed")
        return await self._batcher._submit(xs, ts, deadline, timing, self)

    def close(self) -> None:
        """Drop whatever is still waiting and give the stream's share back (idempotent)."""
        if not self.closed:
            self.closed = True
            self._batcher._close_stream(self)

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class DynamicBatcher:
    """Batch single items submitted by many coroutines into calls of a blocking ``run_batch``.

    Use ``async with DynamicBatcher(...) as b`` or ``start()`` / ``await stop()`` on the event
    loop that will submit (``submit`` also starts it lazily). Not thread-safe: call ``submit*``
    from that loop only.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 5.0,
        max_queue_size: int = 256,
        name: str = "default",
        observer: BatcherObserver | None = None,
        batch_sizes: Sequence[int] | None = None,
        executor: Executor | None = None,
        output_scale: int = 1,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {max_queue_delay_ms}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        sizes: tuple[int, ...] | None = None
        if batch_sizes is not None:
            sizes = tuple(int(s) for s in batch_sizes)
            if not sizes or sizes[0] < 1 or any(a >= b for a, b in itertools.pairwise(sizes)):
                raise ValueError(f"batch_sizes must be increasing positive ints, got {sizes}")
            if max_batch_size > sizes[-1]:
                # A partial batch could not be padded to any supported size: refuse loudly.
                raise ValueError(
                    f"max_batch_size {max_batch_size} exceeds largest batch size {sizes[-1]}"
                )
        if output_scale < 1:
            raise ValueError(f"output_scale must be >= 1, got {output_scale}")
        self._run_batch = run_batch
        self._output_scale = int(output_scale)
        self._max_batch_size = int(max_batch_size)
        self._delay_s = float(max_queue_delay_ms) / 1000.0
        self._max_queue_size = int(max_queue_size)
        self.name = name
        self._observer: BatcherObserver = observer if observer is not None else NullObserver()
        self._batch_sizes = sizes
        self._own_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"batcher-{name}"
        )

        self._queues: dict[_Key, deque[_Item]] = {}
        self._streams: list[BatchStream] = []
        self._rr = 0  # where the next refill starts among the streams (round-robin)
        self._depth = 0
        self._in_flight = 0
        self._seq = itertools.count()
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

        self._ewma_run_s = 0.0
        self._counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker task on the running loop (idempotent)."""
        if self._closed:
            raise BatcherClosedError(f"batcher {self.name!r} is stopped")
        if self._worker is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._worker = self._loop.create_task(self._work(), name=f"batcher-{self.name}")

    async def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting work; with ``drain`` run what is queued first, else fail it.

        After ``timeout`` seconds whatever is still queued or running is failed with
        ``BatcherClosedError`` (a network pass already in its thread cannot be interrupted; its
        result is discarded). Idempotent.
        """
        self._closed = True
        if not drain:
            self._fail_queued()
        worker = self._worker
        if worker is not None and not worker.done():
            assert self._wakeup is not None
            self._wakeup.set()
            try:
                await asyncio.wait_for(asyncio.shield(worker), timeout)
            except asyncio.TimeoutError:
                self._fail_queued()
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
        self._fail_queued()  # nothing should remain; defensive against a crashed worker
        if self._own_executor:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> DynamicBatcher:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ introspection

    @property
    def queue_depth(self) -> int:
        """Items accepted and waiting for a batch (not counting the running batch)."""
        return self._depth

    @property
    def in_flight(self) -> int:
        """Real (unpadded) items in the batch now running."""
        return self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        """Counters and settings, for a debug endpoint and tests."""
        batches = self._counts["batches"]
        return {
            "name": self.name,
            "queue_depth": self._depth,
            "in_flight": self._in_flight,
            "max_batch_size": self._max_batch_size,
            "max_queue_delay_ms": self._delay_s * 1000.0,
            "max_queue_size": self._max_queue_size,
            "batch_sizes": list(self._batch_sizes) if self._batch_sizes else None,
            "closed": self._closed,
            "streams": len(self._streams),
            "pending": sum(s.pending for s in self._streams),
            **self._counts,
            "avg_batch_size": self._counts["items"] / batches if batches else 0.0,
            "ewma_run_s": self._ewma_run_s,
        }

    # ------------------------------------------------------------------ submission

    async def submit(
        self, x: torch.Tensor, t: float | torch.Tensor, *, deadline: float | None = None
    ) -> torch.Tensor:
        """Run one item ``x`` at timestep ``t``; returns its output row.

        ``deadline`` is a ``time.monotonic()`` value by which the item must have started.
        """
        (out,) = await self.submit_many([x], [t], deadline=deadline)
        return out

    async def submit_many(
        self,
        xs: Sequence[Input],
        ts: Sequence[float | torch.Tensor],
        *,
        deadline: float | None = None,
        timing: StepTiming | None = None,
    ) -> list[Any]:
        """Run a group of items (a request's tiles at one step); results in input order.

        All-or-nothing: the group is admitted to the queue as a whole or rejected with
        ``QueueFullError``; if any item fails, the others are dropped (queued ones removed,
        running ones' results discarded) and the first failure in input order is raised.
        A group that may be larger than the queue goes through ``open_stream()`` instead.
        """
        return await self._submit(xs, ts, deadline, timing, None)

    def open_stream(self) -> BatchStream:
        """A stream for one request's items; ``QueueFullError`` when every slot is held.

        Each open stream is owed at least one queue slot, so at most ``max_queue_size``
        streams are open at once; the next one is refused at once, like a full queue.
        """
        if self._closed:
            raise BatcherClosedError(f"batcher {self.name!r} is stopped")
        if len(self._streams) >= self._max_queue_size:
            self._counts["rejected"] += 1
            self._notify_drop(DROP_QUEUE_FULL, 1)
            raise QueueFullError(
                f"batcher {self.name!r} queue full ({len(self._streams)} requests hold all "
                f"{self._max_queue_size} slots)",
                retry_after_s=self._retry_after_s(),
                queue_depth=self._depth,
                max_queue_size=self._max_queue_size,
            )
        self.start()
        stream = BatchStream(self)
        self._streams.append(stream)
        return stream

    async def _submit(
        self,
        xs: Sequence[Input],
        ts: Sequence[float | torch.Tensor],
        deadline: float | None,
        timing: StepTiming | None,
        stream: BatchStream | None,
    ) -> list[Any]:
        if len(xs) != len(ts):
            raise ValueError(f"{len(xs)} inputs but {len(ts)} timesteps")
        if not xs:
            return []
        items = self._accept(xs, ts, deadline, stream)
        try:
            results = await self._gather(items)
        except BaseException:
            self._abandon(items)
            raise
        if timing is not None:
            timing.add(items)
        return results

    def _accept(
        self,
        xs: Sequence[Input],
        ts: Sequence[float | torch.Tensor],
        deadline: float | None,
        stream: BatchStream | None = None,
    ) -> list[_Item]:
        """Validate and enqueue the whole group synchronously (no await: atomic on the loop).

        A stream's items are parked in the stream and moved into the queue by ``_refill``.
        """
        if self._closed:
            raise BatcherClosedError(f"batcher {self.name!r} is stopped")
        for x in xs:
            if not isinstance(x, (torch.Tensor, LazyInput)) or x.dim() < 1:
                raise TypeError(f"inputs must be tensors with >= 1 dim, got {type(x).__name__}")
        times = [float(t) for t in ts]
        self.start()
        n = len(xs)
        if stream is None and self._depth + n > self._max_queue_size:
            self._counts["rejected"] += n
            self._notify_drop(DROP_QUEUE_FULL, n)
            raise QueueFullError(
                f"batcher {self.name!r} queue full ({self._depth}+{n} > {self._max_queue_size})",
                retry_after_s=self._retry_after_s(),
                queue_depth=self._depth,
                max_queue_size=self._max_queue_size,
            )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self._counts["expired"] += n
            self._notify_drop(DROP_DEADLINE, n)
            raise DeadlineExceededError(f"deadline passed before submit to {self.name!r}")
        loop = self._loop
        assert loop is not None and self._wakeup is not None
        items: list[_Item] = []
        for x, t in zip(xs, times, strict=True):
            key: _Key = (tuple(x.shape), x.dtype, x.device)
            item = _Item(x, t, key, loop.create_future(), now, deadline, -1, stream=stream)
            if deadline is not None:
                # loop.time() is monotonic-based but may differ in origin: convert relatively.
                item.timer = loop.call_at(loop.time() + (deadline - now), self._expire, item)
            items.append(item)
        if stream is None:
            for item in items:
                self._enqueue(item, now)
            self._notify("on_enqueue", self._depth)
            self._wakeup.set()
        else:
            for item in items:
                item.queued, item.pending = False, True
            stream._pending.extend(items)
            self._refill()
        return items

    def _enqueue(self, item: _Item, now: float) -> None:
        item.enqueued_at, item.seq = now, next(self._seq)
        item.queued, item.pending = True, False
        self._queues.setdefault(item.key, deque()).append(item)
        self._depth += 1
        if item.stream is not None:
            item.stream.queued += 1

    def _refill(self) -> None:
        """Move waiting stream items into the queue: round-robin, each stream up to its share.

        Called whenever slots may have freed or shares changed (a batch taken, items dropped,
        a stream submitting or closed); synchronous, so atomic on the loop.
        """
        active = [s for s in self._streams if s._pending or s.queued]
        if not active:
            return
        share = max(1, self._max_queue_size // len(active))
        start = self._rr % len(active)
        order = active[start:] + active[:start]
        self._rr += 1
        now = time.monotonic()
        moved = 0
        progress = True
        while progress and self._depth < self._max_queue_size:
            progress = False
            for stream in order:
                if self._depth >= self._max_queue_size:
                    break
                if stream._pending and stream.queued < share:
                    self._enqueue(stream._pending.popleft(), now)
                    moved += 1
                    progress = True
        if moved:
            self._notify("on_enqueue", self._depth)
            if self._wakeup is not None:
                self._wakeup.set()

    def _close_stream(self, stream: BatchStream) -> None:
        leftover = [*stream._pending]
        if leftover:
            self._abandon(leftover)
        with contextlib.suppress(ValueError):
            self._streams.remove(stream)
        self._refill()

    @staticmethod
    async def _gather(items: list[_Item]) -> list[Any]:
        futures = [it.future for it in items]
        pending: set[asyncio.Future[Any]] = set(futures)
        while pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for fut in futures:  # first failure in input order, for determinism
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]
        return [fut.result() for fut in futures]

    def _abandon(self, items: list[_Item]) -> None:
        """The awaiter is gone (cancelled or a sibling failed): drop what has not run."""
        removed = 0
        for it in items:
            if it.queued:
                self._remove(it)
                removed += 1
            elif it.pending:
                self._unpend(it)
                removed += 1
            if not it.future.done():
                it.future.cancel()  # a running item's result will be discarded
            elif not it.future.cancelled():
                it.future.exception()  # mark retrieved: no "never retrieved" warning
        if removed:
            self._counts["cancelled"] += removed
            self._notify_drop(DROP_CANCELLED, removed)
            self._refill()
            if self._wakeup is not None:
                self._wakeup.set()

    def _remove(self, item: _Item) -> None:
        queue = self._queues[item.key]
        queue.remove(item)
        if not queue:
            del self._queues[item.key]
        self._dequeued(item)

    def _dequeued(self, item: _Item) -> None:
        item.queued = False
        self._depth -= 1
        if item.stream is not None:
            item.stream.queued -= 1
        if item.timer is not None:
            item.timer.cancel()
            item.timer = None

    def _unpend(self, item: _Item) -> None:
        """Take a still-waiting item out of its stream (it never reached the queue)."""
        assert item.stream is not None
        item.pending = False
        with contextlib.suppress(ValueError):
            item.stream._pending.remove(item)
        if item.timer is not None:
            item.timer.cancel()
            item.timer = None

    def _expire(self, item: _Item) -> None:
        """Deadline timer: fail the item if it is still waiting."""
        item.timer = None
        if item.pending:
            self._unpend(item)
        elif item.queued:
            self._remove(item)
        else:
            return
        self._counts["expired"] += 1
        self._notify_drop(DROP_DEADLINE, 1)
        if not item.future.done():
            item.future.set_exception(
                DeadlineExceededError(f"deadline passed while queued in {self.name!r}")
            )
        self._refill()
        if self._wakeup is not None:
            self._wakeup.set()

    def _fail_queued(self) -> None:
        """Fail every queued item with BatcherClosedError (stop without drain / timeout)."""
        count = 0
        for queue in list(self._queues.values()):
            for item in queue:
                self._dequeued(item)
                count += 1
                if not item.future.done():
                    item.future.set_exception(
                        BatcherClosedError(f"batcher {self.name!r} stopped before running item")
                    )
        self._queues.clear()
        for stream in self._streams:
            while stream._pending:
                item = stream._pending.popleft()
                item.pending = False
                if item.timer is not None:
                    item.timer.cancel()
                    item.timer = None
                count += 1
                if not item.future.done():
                    item.future.set_exception(
                        BatcherClosedError(f"batcher {self.name!r} stopped before running item")
                    )
        if count:
            self._counts["closed_dropped"] += count
            self._notify_drop(DROP_CLOSED, count)

    def _retry_after_s(self) -> float:
        """Seconds to drain the current backlog at the recent batch rate (Retry-After)."""
        backlog = self._depth + self._in_flight
        batches = max(1, math.ceil(backlog / self._max_batch_size))
        return max(batches * self._ewma_run_s + self._delay_s, 0.001)

    # ------------------------------------------------------------------ worker

    async def _work(self) -> None:
        assert self._wakeup is not None
        try:
            while True:
                now = time.monotonic()
                key, next_flush = self._pick(now)
                if key is not None:
                    batch = self._take(key, now)
                    if batch:
                        await self._execute(batch)
                    continue
                if self._closed and self._depth == 0 and not any(
                    s._pending for s in self._streams
                ):
                    return
                timeout = None if next_flush is None else max(next_flush - now, 0.0)
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not leave awaiters hanging forever
            logger.exception("batcher %r worker crashed; failing queued work", self.name)
            self._closed = True
            self._fail_queued()

    def _pick(self, now: float) -> tuple[_Key | None, float | None]:
        """The ready group whose oldest item is oldest, and else when the next one flushes."""
        best: _Key | None = None
        best_seq = math.inf
        next_flush: float | None = None
        for key, queue in self._queues.items():
            head = queue[0]
            flush_at = head.enqueued_at + self._delay_s
            if self._closed or len(queue) >= self._max_batch_size or flush_at <= now:
                if head.seq < best_seq:
                    best, best_seq = key, head.seq
            elif next_flush is None or flush_at < next_flush:
                next_flush = flush_at
        return best, next_flush

    def _take(self, key: _Key, now: float) -> list[_Item]:
        """Pop up to max_batch_size live items of ``key``; expired ones fail here, unrun."""
        queue = self._queues[key]
        batch: list[_Item] = []
        expired: list[_Item] = []
        while queue and len(batch) < self._max_batch_size:
            item = queue.popleft()
            self._dequeued(item)
            if item.future.done():  # defensive: abandoned items are removed eagerly
                continue
            if item.deadline is not None and item.deadline <= now:
                expired.append(item)
            else:
                batch.append(item)
        if not queue:
            del self._queues[key]
        self._refill()
        for item in expired:
            item.future.set_exception(
                DeadlineExceededError(f"deadline passed while queued in {self.name!r}")
            )
        if expired:
            self._counts["expired"] += len(expired)
            self._notify_drop(DROP_DEADLINE, len(expired))
        return batch

    def _padded_size(self, n: int) -> int:
        if self._batch_sizes is None:
            return n
        return next(s for s in self._batch_sizes if s >= n)

    async def _execute(self, batch: list[_Item]) -> None:
        n = len(batch)
        padded = self._padded_size(n)
        start = time.monotonic()
        waits = [start - item.enqueued_at for item in batch]
        xs = [item.x for item in batch]
        ts = [item.t for item in batch]
        loop = asyncio.get_running_loop()
        self._in_flight = n
        try:
            outs, run_s = await loop.run_in_executor(self._executor, self._run_sync, xs, ts, padded)
        except asyncio.CancelledError:  # stop() timed out while this batch ran
            self._settle_error(
                batch, lambda: BatcherClosedError(f"batcher {self.name!r} stopped mid-batch")
            )
            self._counts["closed_dropped"] += n
            self._notify_drop(DROP_CLOSED, n)
            raise
        except Exception as exc:
            cause, desc = exc, f"{type(exc).__name__}: {exc}"
            logger.error("batcher %r: batch of %d failed: %s", self.name, n, desc, exc_info=exc)
            self._settle_error(
                batch,
                lambda: BatchExecutionError(f"batch {self.name!r} of {n} failed: {desc}", cause),
            )
            self._counts["failed_batches"] += 1
            self._counts["failed"] += n
            self._notify_drop(DROP_ERROR, n)
            return
        finally:
            self._in_flight = 0
        finished = time.monotonic()
        failed = 0
        for item, (ok, out) in zip(batch, outs, strict=True):
            item.started_at, item.finished_at = start, finished
            if item.future.done():  # cancelled awaiter: discard silently
                continue
            if ok:
                item.future.set_result(out)
            else:
                failed += 1
                item.future.set_exception(BatchExecutionError(
                    f"output of an item of batch {self.name!r} could not be taken: "
                    f"{type(out).__name__}: {out}", out))
        if failed:
            self._counts["failed"] += failed
            self._notify_drop(DROP_ERROR, failed)
        self._counts["batches"] += 1
        self._counts["items"] += n
        self._counts["padded_items"] += padded - n
        if self._counts["batches"] == 1:
            self._ewma_run_s = run_s
        else:
            self._ewma_run_s += _EWMA_ALPHA * (run_s - self._ewma_run_s)
        self._notify("on_batch", n, padded, waits, run_s)

    @staticmethod
    def _settle_error(batch: list[_Item], make: Callable[[], BaseException]) -> None:
        # A fresh exception per awaiter: one shared instance would accumulate tracebacks.
        for item in batch:
            if not item.future.done():
                item.future.set_exception(make())

    def _run_sync(
        self, xs: list[Input], ts: list[float], padded: int
    ) -> tuple[list[tuple[bool, Any]], float]:
        """Executor thread: make lazy inputs, stack (padding by repeating the last row), run,
        check, split; lazy items' outputs are consumed here, each failure kept to its item."""
        n = len(xs)
        made = [x.make() if isinstance(x, LazyInput) else x for x in xs]
        for given, x in zip(xs, made, strict=True):
            if isinstance(given, LazyInput) and tuple(x.shape) != given.shape:
                raise ValueError(f"lazy input made {tuple(x.shape)}, declared {given.shape}")
        if padded > n:
            made = made + [made[-1]] * (padded - n)
            ts = ts + [ts[-1]] * (padded - n)
        x = torch.stack(made)
        del made
        t = torch.tensor(ts, dtype=torch.float32, device=x.device)
        t0 = time.perf_counter()
        y = self._run_batch(x, t)
        run_s = time.perf_counter() - t0
        spatial = tuple(s * self._output_scale for s in x.shape[2:])
        if (
            not isinstance(y, torch.Tensor)
            or y.dim() != x.dim()
            or y.shape[0] != padded
            or tuple(y.shape[2:]) != spatial
        ):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"run_batch returned {got} for input {tuple(x.shape)}; "
                f"expected ({padded}, C_out, {', '.join(map(str, spatial))})"
            )
        del x
        results: list[tuple[bool, Any]] = []
        for given, out in zip(xs, y.unbind(0)[:n], strict=True):
            if isinstance(given, LazyInput) and given.consume is not None:
                try:
                    results.append((True, given.consume(out)))
                except Exception as exc:
                    results.append((False, exc))
            else:
                results.append((True, out))
        return results, run_s

    # ------------------------------------------------------------------ observer

    def _notify(self, hook: str, *args: Any) -> None:
        try:
            getattr(self._observer, hook)(*args)
        except Exception:
            logger.exception("batcher %r observer.%s failed", self.name, hook)

    def _notify_drop(self, reason: str, count: int) -> None:
        self._notify("on_drop", reason, count)
