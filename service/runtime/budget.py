"""The process's memory admission, set up once the tasks are loaded.

Why measured at start-up: the budget is for resident memory, and what the process holds before
any request (weights, the runtime, allocator pools) and what a network pass adds at its peak
depend on the models, the engine and the machine. Each task's largest pass is extrapolated from
one measured pass at the tile size (skipped without warm-up, when only the pass's own inputs and
outputs are counted); one pass per task may run at a time, so the reserves add up.
"""

from __future__ import annotations

import logging

import torch

from service.runtime.admission import MemoryAdmission
from service.runtime.memory import (
    MB,
    current_rss,
    default_budget_bytes,
    measure_pass_bytes,
    pass_pixels,
    scale_pass_bytes,
)
from service.runtime.task import TaskModel
from service.settings import Settings, max_batch_for

logger = logging.getLogger("service.runtime")


def budget_bytes(settings: Settings) -> int:
    """``memory_budget_mb``, else the default derived from the cgroup limit or RAM."""
    if settings.memory_budget_mb is not None:
        return settings.memory_budget_mb * MB
    return default_budget_bytes()


def task_pass_reserve(task: TaskModel, settings: Settings, measure: bool = True) -> int:
    """Bytes the task's largest batched pass may add to the RSS."""
    tile = settings.tile_size
    pixels = pass_pixels(task.kind, max_batch_for(settings, task.device), tile,
                         settings.whole_image_max_pixels)
    measured = 0
    if measure and task.engine is not None:
        x, t = task.kind.warmup_inputs(tile, batch=1)
        with torch.inference_mode():
            measured = measure_pass_bytes(lambda: task.run_batch(x, t))
    return scale_pass_bytes(measured, tile * tile, pixels)


def process_admission(settings: Settings, tasks: list[TaskModel]) -> MemoryAdmission:
    """The admission for these loaded tasks; blocking (it may run passes), call off the loop."""
    measure = settings.warmup
    reserves = {task.name: task_pass_reserve(task, settings, measure) for task in tasks}
    baseline = current_rss() + sum(reserves.values())
    admission = MemoryAdmission(budget_bytes(settings), baseline)
    logger.info(
        "memory: budget %.0f MB, baseline %.0f MB (RSS %.0f MB + passes %s), %.0f MB for "
        "requests", admission.budget / MB, baseline / MB, (baseline - sum(reserves.values())) / MB,
        {k: round(v / MB) for k, v in reserves.items()}, admission.available / MB)
    return admission
