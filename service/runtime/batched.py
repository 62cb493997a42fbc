"""Driving a restoration session through a task's dynamic batcher (the service's driver).

The request's coroutine owns the session; the batcher only ever sees (input, timestep) pairs,
so tiles of many requests at different steps, and whole images of one size, share passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

import torch

from service.batching import LazyInput, StepTiming
from service.restoration import RestorationSession
from service.runtime.task import TaskModel

RoundCallback = Callable[[int, int], None]
"""``progress(done_rounds, rounds)`` after each round, on the event loop."""


def round_items(session: RestorationSession) -> tuple[list[LazyInput], list[float]]:
    """This round's tiles as lazy batcher items: each input is cut from the session's state
    when its batch runs and its output blended in right after, in the batcher's thread."""
    if session.done:
        raise RuntimeError("the session is finished")
    times = [session.round_timestep] * session.num_tiles
    shape = tuple(session.input_shape)
    items = [
        LazyInput(shape, partial(session.tile_input, i), partial(session.accept, i))
        for i in range(session.num_tiles)
    ]
    return items, times


async def run_session_batched(
    task: TaskModel,
    session: RestorationSession,
    *,
    deadline: float,
    timing: StepTiming,
    progress: RoundCallback | None = None,
) -> torch.Tensor:
    """-> the restored (1, 3, sH, sW) in [0, 1].

    The request holds one stream of the batcher: its tiles enter the bounded queue in windows
    (its fair share), so any number of tiles is served without filling the queue, and leave it
    when the request is cancelled. Tile inputs are made and outputs blended in the batcher's
    thread, whole-image work (a round's step, the result) in a worker thread: the event loop
    only schedules.
    """
    if task.batcher is None:
        raise RuntimeError(f"task {task.name} has no running batcher")
    with task.batcher.open_stream() as stream:
        done_rounds = 0
        while not session.done:
            items, times = round_items(session)
            await stream.submit_many(items, times, deadline=deadline, timing=timing)
            del items
            await asyncio.to_thread(session.finish_round)
            done_rounds += 1
            if progress is not None:
                progress(done_rounds, session.rounds)
    return await asyncio.to_thread(session.result)
