"""Driving a restoration session through a task's dynamic batcher (the service's driver).

The request's coroutine owns the session; the batcher only ever sees (input, timestep) pairs,
so tiles of many requests at different steps, and whole images of one size, share passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import torch

from service.batching import StepTiming
from service.restoration import RestorationSession
from service.runtime.task import TaskModel

RoundCallback = Callable[[int, int], None]
"""``progress(done_rounds, rounds)`` after each round, on the event loop."""


async def run_session_batched(
    task: TaskModel,
    session: RestorationSession,
    *,
    deadline: float,
    timing: StepTiming,
    progress: RoundCallback | None = None,
) -> torch.Tensor:
    """-> the restored (1, 3, sH, sW) in [0, 1]; session state work runs off the event loop."""
    if task.batcher is None:
        raise RuntimeError(f"task {task.name} has no running batcher")
    done_rounds = 0
    while not session.done:
        inputs, times = await asyncio.to_thread(session.round_inputs)
        outputs = await task.batcher.submit_many(inputs, times, deadline=deadline, timing=timing)
        await asyncio.to_thread(session.advance, outputs)
        done_rounds += 1
        if progress is not None:
            progress(done_rounds, session.rounds)
    return await asyncio.to_thread(session.result)
