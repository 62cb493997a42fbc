"""The job store contract: records, results, cancel flags and leases, shared by every replica
that uses the same store.

Two implementations: :class:`~service.jobs.local.LocalJobStore` (one process, results on local
disk) and :class:`~service.jobs.redis_store.RedisJobStore` (any number of replicas on one
Redis). The rules both keep:

* A terminal state is final: ``update`` never overwrites succeeded / failed / cancelled, so a
  replica that lost its lease cannot resurrect a job another replica has marked failed.
* A result is visible only whole: ``finish`` stores the bytes and the succeeded record together
  (local: temp file then rename, then the record; Redis: one script).
* Results expire ``ttl_s`` after the job ends, and all results together stay under
  ``max_bytes``: storing one evicts the oldest finished jobs (record and result) first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable

from service.jobs.model import JobRecord


class ResultTooLargeError(Exception):
    """One result is larger than the whole store's cap: it can never be kept."""


class JobStore(ABC):
    def __init__(self, ttl_s: float, max_bytes: int, poll_s: float) -> None:
        self.ttl_s, self.max_bytes, self.poll_s = ttl_s, max_bytes, poll_s

    #: Exceptions that mean "the store cannot be reached now" (503 to clients, not 500).
    outage_errors: tuple[type[BaseException], ...] = (OSError,)

    @abstractmethod
    async def start(self) -> None:
        """Connect / load; called once before use."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and (for a throw-away local directory) files."""

    @abstractmethod
    async def create(self, record: JobRecord, lease_s: float) -> None:
        """Store a new queued job and its owner's first lease."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """The record, None if unknown, expired or evicted. A queued or running job whose
        owner's lease has lapsed is marked failed here, by whichever replica reads it first."""

    @abstractmethod
    async def update(self, record: JobRecord) -> bool:
        """Write a non-result change (state, progress); False if the stored job is already
        terminal or gone, i.e. the writer no longer owns a live job."""

    @abstractmethod
    async def finish(self, record: JobRecord, data: bytes) -> bool:
        """Store ``data`` and the succeeded ``record`` as one step (see the module doc); False
        as for ``update``. Raises ResultTooLargeError when ``data`` alone exceeds the cap."""

    @abstractmethod
    async def get_result(self, job_id: str) -> bytes | None: ...

    @abstractmethod
    async def request_cancel(self, job_id: str) -> None:
        """Flag the job for its owner, wherever it runs."""

    @abstractmethod
    async def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        """Which of these jobs have a cancel flag (the owner polls this)."""

    @abstractmethod
    async def renew_leases(self, job_ids: Iterable[str], owner: str, lease_s: float) -> None:
        """The owner is alive: extend each job's lease by ``lease_s`` from now."""

    @abstractmethod
    def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """The record now, then after every change, until a terminal state (then stops) or
        until the job disappears."""

    @abstractmethod
    async def sweep(self) -> None:
        """Drop expired jobs (a store whose keys do not expire by themselves)."""

    def check_size(self, data: bytes) -> None:
        if len(data) > self.max_bytes:
            raise ResultTooLargeError(
                f"the result is {len(data)} bytes, over the job store's cap of"
                f" {self.max_bytes} bytes (DIFFMAMBA_JOB_STORE_MAX_BYTES)")
