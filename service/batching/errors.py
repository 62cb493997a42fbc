"""Errors raised to callers of :class:`~service.batching.DynamicBatcher`.

Each maps to one HTTP answer in the API layer, so they are distinct types rather than
messages: ``QueueFullError`` -> 503 + Retry-After, ``DeadlineExceededError`` -> 504,
``BatcherClosedError`` -> 503 (shutting down), ``BatchExecutionError`` -> 500.
"""

from __future__ import annotations

__all__ = [
    "BatchExecutionError",
    "BatcherClosedError",
    "BatcherError",
    "DeadlineExceededError",
    "QueueFullError",
]


class BatcherError(Exception):
    """Base class, so callers can catch every batcher failure in one clause."""


class QueueFullError(BatcherError):
    """Accepting the item(s) would exceed ``max_queue_size``; shed load instead of queueing.

    ``retry_after_s`` is an estimate of how long the current queue takes to drain, for the
    Retry-After header.
    """

    def __init__(
        self, message: str, *, retry_after_s: float, queue_depth: int, max_queue_size: int
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.queue_depth = queue_depth
        self.max_queue_size = max_queue_size


class DeadlineExceededError(BatcherError):
    """The item's deadline passed before it reached the network; it was never run."""


class BatcherClosedError(BatcherError):
    """The batcher is stopping or stopped: no new work, or queued work was abandoned."""


class BatchExecutionError(BatcherError):
    """``run_batch`` raised (or returned a malformed result) for the batch holding this item.

    The original exception is kept as ``cause`` (and ``__cause__``) and named in the message,
    e.g. ``"batch 'default' of 4 failed: RuntimeError: boom"``, so logs say what went wrong
    without the traceback.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.__cause__ = cause
