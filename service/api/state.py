"""What the app holds between requests: settings, metrics, loaded tasks, readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from service.jobs import JobManager, build_job_manager
from service.metrics import ServiceMetrics
from service.runtime import TaskModel, load_tasks, start_batcher
from service.runtime.admission import MemoryAdmission
from service.runtime.budget import process_admission
from service.settings import Settings

logger = logging.getLogger("service.api")


class MetricsObserver:
    """Feeds one task's batcher events into the Prometheus metrics."""

    def __init__(self, metrics: ServiceMetrics, task: str) -> None:
        self.metrics, self.task = metrics, task

    def on_enqueue(self, depth: int) -> None:
        pass  # the depth gauge reads the batcher directly at scrape time

    def on_batch(self, size: int, padded_size: int, queue_waits: list[float],
                 run_seconds: float) -> None:
        self.metrics.observe_batch(self.task, size, queue_waits, run_seconds)

    def on_drop(self, reason: str, count: int) -> None:
        self.metrics.dropped.labels(task=self.task, reason=reason).inc(count)


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    tasks: dict[str, TaskModel] = field(default_factory=dict)
    # Memory admission of requests (service.runtime.admission); set once the tasks are loaded.
    admission: MemoryAdmission | None = None
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    # HTTP requests being served (InFlightMiddleware); the drain waits for this to reach 0.
    in_flight: int = 0
    # time.monotonic() by which a drain must end; None while not draining.
    drain_deadline: float | None = None
    # Async jobs (POST /v1/jobs); None until started, or when the store could not be opened.
    jobs: JobManager | None = None
    jobs_error: str | None = None

    def begin_drain(self, timeout: float) -> None:
        """Refuse new work from now on (/readyz and /restore answer 503); idempotent."""
        self.draining = True
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + timeout
        self.metrics.ready.set(0)

    def drain_time_left(self) -> float:
        """Seconds left for the batchers to finish at shutdown: what the drain has not used."""
        if self.drain_deadline is None:
            return self.settings.drain_timeout_s
        return max(0.0, self.drain_deadline - time.monotonic())

    async def start_jobs(self) -> None:
        """Open the job store; unfinished jobs count as in flight, so a drain waits for them."""
        def on_active(delta: int) -> None:
            self.in_flight += delta

        try:
            manager = build_job_manager(self.settings, on_active)
            await manager.start()
        except Exception as exc:
            self.jobs_error = f"{type(exc).__name__}: {exc}"
            logger.error("async jobs unavailable: %s", self.jobs_error)
            return
        self.jobs = manager

    async def stop_jobs(self, timeout: float) -> None:
        if self.jobs is not None:
            await self.jobs.stop(timeout)

    async def load(self) -> None:
        """Runs in the background at start-up; /readyz turns 200 only when this finishes."""
        try:
            tasks = await asyncio.to_thread(load_tasks, self.settings)
            self.admission = await asyncio.to_thread(process_admission, self.settings, tasks)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("model loading failed: %s", self.load_error)
            return
        s = self.settings
        for task in tasks:
            batcher = start_batcher(task, s, MetricsObserver(self.metrics, task.name))
            self.metrics.queue_depth.labels(task=task.name).set_function(
                lambda b=batcher: b.queue_depth
            )
            self.metrics.model_load_seconds.labels(task=task.name).set(task.load_seconds)
            self.metrics.queue_capacity.labels(task=task.name).set(s.max_queue_size)
            self.metrics.describe_model(task.name, task.loaded.arch, task.kind.name,
                                        task.loaded.sha256, task.loaded.config.to_dict())
            self.tasks[task.name] = task
        self.ready = True
        self.metrics.ready.set(0 if self.draining else 1)
        logger.info("ready: tasks %s", sorted(self.tasks))

    async def stop(self, drain_timeout: float | None = None) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        for task in self.tasks.values():
            if task.batcher is not None:
                await task.batcher.stop(drain=True, timeout=drain_timeout)
