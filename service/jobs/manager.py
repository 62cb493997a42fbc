"""Running this replica's jobs: admission, the compute task per job, progress, cancellation,
leases and webhooks.

The store is the truth every replica reads; the manager only knows the jobs it runs itself.
A job is computed by the replica that accepted it (its decoded input lives there), through the
same restoration path as a synchronous request; cancelling the job's task removes its queued
tiles from the batcher. Cancel flags set on other replicas and lease renewals go through the
store on one loop, every ``poll_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.jobs.model import CANCELLED, FAILED, RUNNING, SUCCEEDED, JobRecord
from service.jobs.store import JobStore, ResultTooLargeError
from service.jobs.webhook import deliver_webhook

logger = logging.getLogger("service.jobs")

ProgressFn = Callable[[int, int, int], None]


@dataclass
class JobOutput:
    data: bytes
    media_type: str
    headers: dict[str, str]


class JobFailure(Exception):
    """The compute failed for a reason the client should see: ``{"error", "detail"}``."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error, self.detail = error, detail


class QueueFullError(Exception):
    """This replica already holds ``queue_size`` unfinished jobs."""


Compute = Callable[[ProgressFn], Awaitable[JobOutput]]


@dataclass
class WebhookPolicy:
    retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 10.0


class JobManager:
    def __init__(self, store: JobStore, *, concurrency: int, queue_size: int, lease_s: float,
                 poll_s: float, webhooks: WebhookPolicy | None = None,
                 on_active: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.owner = uuid.uuid4().hex[:12]
        self.queue_size, self.lease_s, self.poll_s = queue_size, lease_s, poll_s
        self.webhooks = webhooks or WebhookPolicy()
        self._on_active = on_active or (lambda delta: None)
        self._concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lost: set[str] = set()  # jobs another replica already finished (lease lapsed)
        self._background: set[asyncio.Task[object]] = set()
        self._maintainer: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self._concurrency)
        await self.store.start()
        self._maintainer = asyncio.create_task(self._maintain(), name="jobs-maintain")

    async def stop(self, timeout: float) -> None:
        """Let running jobs finish for up to ``timeout`` s, then fail the rest (the server is
        going away), deliver what webhooks can in a moment, and close the store."""
        if self._tasks:
            await asyncio.wait(set(self._tasks.values()), timeout=max(timeout, 0.0))
        self._stopping = True
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks.values()), timeout=5.0)
        if self._background:
            await asyncio.wait(set(self._background), timeout=2.0)
        for task in [*self._background, self._maintainer]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self.store.close()

    @property
    def active(self) -> int:
        """Jobs of this replica not finished yet (queued or running)."""
        return len(self._tasks)

    # ------------------------------------------------------------------ requests

    async def submit(self, record: JobRecord, compute: Compute) -> JobRecord:
        if self.active >= self.queue_size:
            raise QueueFullError(f"{self.active} unfinished jobs on this replica"
                                 f" (DIFFMAMBA_JOB_QUEUE_SIZE={self.queue_size})")
        record.owner = self.owner
        await self.store.create(record, self.lease_s)
        self._tasks[record.id] = asyncio.create_task(self._run(record, compute),
                                                     name=f"job-{record.id}")
        self._on_active(1)
        return record

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job wherever it runs. Here: at once, and the record that
        comes back is final; on another replica: the flag is set and the owner acts within
        ``poll_s`` (the record that comes back may still be running)."""
        record = await self.store.get(job_id)
        if record is None or record.terminal:
            return record
        task = self._tasks.get(job_id)
        if task is None:
            await self.store.request_cancel(job_id)
            return record
        task.cancel()
        await asyncio.wait({task}, timeout=10.0)
        return await self.store.get(job_id)

    # ------------------------------------------------------------------ one job

    async def _run(self, record: JobRecord, compute: Compute) -> None:
        dirty = asyncio.Event()
        flusher: asyncio.Task[None] | None = None

        def progress(done: int, total: int, tiles: int) -> None:
            p = record.progress
            p.passes_done, p.passes_total, p.tiles = done, total, tiles
            p.step, p.steps = done // max(tiles, 1), total // max(tiles, 1)
            dirty.set()

        async def flush() -> None:
            while True:
                await dirty.wait()
                dirty.clear()
                try:
                    written = await self.store.update(record)
                except self.store.outage_errors as exc:  # progress is best effort
                    logger.warning("job %s: progress not recorded: %s", record.id, exc)
                    continue
                if not written:
                    self._lose(record.id)
                    return

        try:
            assert self._slots is not None
            async with self._slots:
                record.state, record.started_at = RUNNING, time.time()
                if not await self.store.update(record):
                    self._lose(record.id)
                    return
                flusher = asyncio.create_task(flush())
                output = await compute(progress)
                await self._stop_flusher(flusher)
                record.state, record.finished_at = SUCCEEDED, time.time()
                record.media_type, record.headers = output.media_type, output.headers
                if not await self.store.finish(record, output.data):
                    self._lose(record.id)
        except asyncio.CancelledError:
            if record.id in self._lost:
                return
            if self._stopping:
                await self._end(record, FAILED, "shutdown",
                                "the server shut down before the job finished; submit it again")
            else:
                await self._end(record, CANCELLED, "cancelled", "cancelled by request")
        except JobFailure as exc:
            await self._end(record, FAILED, exc.error, exc.detail)
        except ResultTooLargeError as exc:
            await self._end(record, FAILED, "result_too_large", str(exc))
        except Exception as exc:
            logger.exception("job %s failed", record.id)
            await self._end(record, FAILED, "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            if flusher is not None:
                await self._stop_flusher(flusher)
            self._tasks.pop(record.id, None)
            self._lost.discard(record.id)
            self._on_active(-1)
            if record.webhook and record.terminal:
                self._spawn(self._webhook(record))

    async def _end(self, record: JobRecord, state: str, error: str, detail: str) -> None:
        record.state, record.finished_at = state, time.time()
        record.error = {"error": error, "detail": detail}
        try:
            await self.store.update(record)
        except Exception:  # the store is down: readers will see the lease lapse instead
            logger.exception("job %s: could not record state %s", record.id, state)

    def _lose(self, job_id: str) -> None:
        """The store says this job is already finished (another replica marked it failed when
        our lease lapsed, or it expired): stop computing it and write nothing more."""
        logger.warning("job %s was finished elsewhere; dropping its work here", job_id)
        self._lost.add(job_id)
        task = self._tasks.get(job_id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    @staticmethod
    async def _stop_flusher(flusher: asyncio.Task[None]) -> None:
        flusher.cancel()
        with contextlib.suppress(BaseException):
            await flusher

    async def _webhook(self, record: JobRecord) -> None:
        assert record.webhook is not None
        w = self.webhooks
        await deliver_webhook(record.webhook, record.view(self.store.ttl_s), retries=w.retries,
                              backoff_s=w.backoff_s, timeout_s=w.timeout_s)

    def _spawn(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ housekeeping

    async def _maintain(self) -> None:
        """Renew leases (every third of a lease), act on cancel flags, drop expired jobs."""
        last_renew = 0.0
        while True:
            try:
                ids = list(self._tasks)
                now = time.monotonic()
                if ids and now - last_renew >= self.lease_s / 3:
                    await self.store.renew_leases(ids, self.owner, self.lease_s)
                    last_renew = now
                for job_id in await self.store.cancel_requested(ids):
                    task = self._tasks.get(job_id)
                    if task is not None:
                        logger.info("job %s: cancel requested through the store", job_id)
                        task.cancel()
                await self.store.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("job store housekeeping failed; retrying")
            await asyncio.sleep(min(self.poll_s, self.lease_s / 3))
