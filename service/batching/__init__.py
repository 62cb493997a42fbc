"""Dynamic batching of network passes across concurrent requests (Triton-style).

See :mod:`service.batching.batcher` for the semantics; errors map to HTTP answers as
described in :mod:`service.batching.errors`.
"""

from service.batching.batcher import BatchStream, DynamicBatcher, LazyInput, RunBatch, StepTiming
from service.batching.errors import (
    BatcherClosedError,
    BatcherError,
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

__all__ = [
    "DROP_CANCELLED",
    "DROP_CLOSED",
    "DROP_DEADLINE",
    "DROP_ERROR",
    "DROP_QUEUE_FULL",
    "BatchExecutionError",
    "BatchStream",
    "BatcherClosedError",
    "BatcherError",
    "BatcherObserver",
    "DeadlineExceededError",
    "DynamicBatcher",
    "LazyInput",
    "NullObserver",
    "QueueFullError",
    "RunBatch",
    "StepTiming",
]
