"""Metrics hooks of the batcher, kept abstract so the core has no Prometheus dependency."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = [
    "DROP_CANCELLED",
    "DROP_CLOSED",
    "DROP_DEADLINE",
    "DROP_ERROR",
    "DROP_QUEUE_FULL",
    "BatcherObserver",
    "NullObserver",
]

# ``reason`` values passed to ``on_drop`` (stable strings: they become metric labels).
DROP_QUEUE_FULL = "queue_full"  # rejected at submit, never queued
DROP_DEADLINE = "deadline"  # deadline passed before the item ran
DROP_CANCELLED = "cancelled"  # the awaiting coroutine was cancelled while the item queued
DROP_ERROR = "error"  # run_batch raised or returned a malformed result
DROP_CLOSED = "closed"  # abandoned by stop(drain=False) or a stop timeout


@runtime_checkable
class BatcherObserver(Protocol):
    """Called on the event loop thread; implementations must be cheap and must not block.

    Exceptions raised by a hook are logged and swallowed: metrics must never break serving.
    """

    def on_enqueue(self, depth: int) -> None:
        """Items were accepted; ``depth`` is the queue depth after accepting them."""

    def on_batch(
        self, size: int, padded_size: int, queue_waits: list[float], run_seconds: float
    ) -> None:
        """A batch succeeded: ``size`` real items, ``padded_size`` rows sent to the network,
        each real item's seconds between enqueue and batch start, and the network-pass time."""

    def on_drop(self, reason: str, count: int) -> None:
        """``count`` items ended without a result, for ``reason`` (one of the DROP_* values)."""


class NullObserver:
    """Default observer: does nothing."""

    def on_enqueue(self, depth: int) -> None:
        pass

    def on_batch(
        self, size: int, padded_size: int, queue_waits: list[float], run_seconds: float
    ) -> None:
        pass

    def on_drop(self, reason: str, count: int) -> None:
        pass
