"""The embedded job store: one process, records in memory, results as files on local disk.

``diffmamba serve`` needs nothing else. With a configured directory the records are also
written beside the results (on each state change, not on progress), so finished jobs survive a
restart of the process; a job that was queued or running when the process stopped is marked
failed when the directory is loaded again. Without one, a private temporary directory is used
and removed at shutdown. One process per directory: two processes sharing one would each
take the other's running jobs for abandoned ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from service.jobs.model import FAILED, SUCCEEDED, TERMINAL, JobRecord
from service.jobs.store import JobStore

logger = logging.getLogger("service.jobs")

RESULT_SUFFIX, RECORD_SUFFIX = ".result", ".json"


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, then rename: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class LocalJobStore(JobStore):
    def __init__(self, directory: Path | None, *, ttl_s: float, max_bytes: int,
                 poll_s: float = 0.25) -> None:
        super().__init__(ttl_s, max_bytes, poll_s)
        self.persistent = directory is not None
        self.directory = directory
        self._records: dict[str, JobRecord] = {}
        self._cancel: set[str] = set()
        # Stored results by finishing order (oldest first) and their sizes: the eviction order.
        self._results: OrderedDict[str, int] = OrderedDict()
        self._total = 0
        self._version = 0
        self._changed: asyncio.Condition | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="diffmamba-jobs-"))
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self._load)
        logger.info("job store: local, results in %s", self.directory)

    async def close(self) -> None:
        if not self.persistent and self.directory is not None:
            await asyncio.to_thread(shutil.rmtree, self.directory, True)

    def _load(self) -> None:
        """Records and results of an earlier process in the same directory."""
        assert self.directory is not None
        for tmp in self.directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        now = time.time()
        loaded = []
        for path in self.directory.glob(f"*{RECORD_SUFFIX}"):
            try:
                record = JobRecord.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("job store: skipping unreadable record %s: %s", path, exc)
                continue
            if not record.terminal:
                record.state, record.finished_at = FAILED, now
                record.error = {"error": "server_restarted",
                                "detail": "the server stopped before the job finished"}
                self._write_record(record)
            loaded.append(record)
        for record in sorted(loaded, key=lambda r: r.finished_at or 0.0):
            result = self._result_path(record.id)
            if record.state == SUCCEEDED:
                if not result.exists():
                    self._record_path(record.id).unlink(missing_ok=True)
                    continue
                self._results[record.id] = record.result_bytes
                self._total += record.result_bytes
            self._records[record.id] = record
        for result in self.directory.glob(f"*{RESULT_SUFFIX}"):
            if result.name[: -len(RESULT_SUFFIX)] not in self._results:
                result.unlink(missing_ok=True)
        self._sweep_now(now)

    # ------------------------------------------------------------------ paths and files

    def _result_path(self, job_id: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{job_id}{RESULT_SUFFIX}"

    def _record_path(self, job_id: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{job_id}{RECORD_SUFFIX}"

    def _write_record(self, record: JobRecord) -> None:
        if self.persistent:
            _write_atomic(self._record_path(record.id), json.dumps(record.to_dict()).encode())

    def _drop(self, job_id: str) -> None:
        """Forget a job and delete its files (expiry and eviction)."""
        self._records.pop(job_id, None)
        self._cancel.discard(job_id)
        size = self._results.pop(job_id, None)
        if size is not None:
            self._total -= size
            self._result_path(job_id).unlink(missing_ok=True)
        if self.persistent:
            self._record_path(job_id).unlink(missing_ok=True)

    def _expired(self, record: JobRecord, now: float) -> bool:
        return record.finished_at is not None and record.finished_at + self.ttl_s <= now

    def _sweep_now(self, now: float) -> None:
        for job_id in [i for i, r in self._records.items() if self._expired(r, now)]:
            self._drop(job_id)

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._version += 1
            self._changed.notify_all()

    # ------------------------------------------------------------------ the contract

    async def create(self, record: JobRecord, lease_s: float) -> None:
        self._records[record.id] = JobRecord.from_dict(record.to_dict())
        await asyncio.to_thread(self._write_record, record)
        await self._notify()

    async def get(self, job_id: str) -> JobRecord | None:
        record = self._records.get(job_id)
        if record is None:
            return None
        if self._expired(record, time.time()):
            await asyncio.to_thread(self._drop, job_id)
            return None
        return JobRecord.from_dict(record.to_dict())

    async def update(self, record: JobRecord) -> bool:
        current = self._records.get(record.id)
        if current is None or current.state in TERMINAL:
            return False
        state_changed = current.state != record.state
        self._records[record.id] = JobRecord.from_dict(record.to_dict())
        if state_changed:
            await asyncio.to_thread(self._write_record, record)
        await self._notify()
        return True

    async def finish(self, record: JobRecord, data: bytes) -> bool:
        self.check_size(data)
        current = self._records.get(record.id)
        if current is None or current.state in TERMINAL:
            return False
        await asyncio.to_thread(_write_atomic, self._result_path(record.id), data)
        current = self._records.get(record.id)  # the write yielded: check again
        if current is None or current.state in TERMINAL:
            self._result_path(record.id).unlink(missing_ok=True)
            return False
        evicted = []
        while self._results and self._total + len(data) > self.max_bytes:
            oldest = next(iter(self._results))
            evicted.append(oldest)
            self._drop(oldest)
        if evicted:
            logger.info("job store: evicted %d result(s) to stay under %d bytes: %s",
                        len(evicted), self.max_bytes, ", ".join(evicted))
        record.result_bytes = len(data)
        self._results[record.id] = len(data)
        self._total += len(data)
        self._records[record.id] = JobRecord.from_dict(record.to_dict())
        await asyncio.to_thread(self._write_record, record)
        await self._notify()
        return True

    async def get_result(self, job_id: str) -> bytes | None:
        if job_id not in self._results or await self.get(job_id) is None:
            return None
        try:
            return await asyncio.to_thread(self._result_path(job_id).read_bytes)
        except FileNotFoundError:  # evicted meanwhile
            return None

    async def request_cancel(self, job_id: str) -> None:
        if job_id in self._records:
            self._cancel.add(job_id)
            await self._notify()

    async def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        return self._cancel.intersection(job_ids)

    async def renew_leases(self, job_ids: Iterable[str], owner: str, lease_s: float) -> None:
        """One process: the owner is this process, alive by definition."""

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        assert self._changed is not None
        seen: dict | None = None
        while True:
            async with self._changed:
                version = self._version
            record = await self.get(job_id)
            if record is None:
                return
            now = record.to_dict()
            if now != seen:
                seen = now
                yield record
            if record.terminal:
                return
            async with self._changed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda v=version: self._version != v), self.poll_s)

    async def sweep(self) -> None:
        expired = [i for i, r in self._records.items() if self._expired(r, time.time())]
        if expired:
            await asyncio.to_thread(lambda: [self._drop(i) for i in expired])
