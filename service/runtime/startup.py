"""Start-up wiring shared by the service, the CLI and benchmarks: discover the checkpoints of a
models directory, load each task with its engine, and give it a running batcher."""

from __future__ import annotations

import logging

import torch

from service.batching import BatcherObserver, DynamicBatcher
from service.engines import EngineOptions
from service.runtime.device import resolve_device
from service.runtime.discovery import discover_tasks
from service.runtime.task import TaskModel, load_task
from service.scan import warmup as warm_scan
from service.settings import Settings, max_batch_for

logger = logging.getLogger("service.runtime")


def load_tasks(settings: Settings, device: torch.device | None = None) -> list[TaskModel]:
    """Every task of ``settings.models_dir``, loaded, with its engine built and warmed."""
    device = device or resolve_device(settings.device)
    entries = discover_tasks(settings.models_dir)
    if not entries:
        raise RuntimeError(f"no checkpoints found in {settings.models_dir}")
    if settings.warmup:
        warm_scan()
    loaded = []
    for entry in entries:
        task = load_task(entry, device, settings.default_steps, settings.warmup,
                         EngineOptions.for_task(settings, entry.task, device))
        logger.info("task %s: %s (%s %s, %d params) on %s in %.1f s", task.name,
                    entry.path.name, task.loaded.arch, task.kind.name, task.loaded.num_params,
                    device, task.load_seconds)
        loaded.append(task)
    return loaded


def start_batcher(task: TaskModel, settings: Settings,
                  observer: BatcherObserver | None = None) -> DynamicBatcher:
    """The task's dynamic batcher over its engine, started (needs a running event loop)."""
    task.batcher = DynamicBatcher(
        task.run_batch,
        max_batch_size=max_batch_for(settings, task.device),
        max_queue_delay_ms=settings.max_queue_delay_ms,
        max_queue_size=settings.max_queue_size,
        name=task.name,
        observer=observer,
        output_scale=task.kind.scale,
    )
    task.batcher.start()
    return task.batcher

