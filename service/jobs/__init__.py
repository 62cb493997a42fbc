"""Async jobs: a job store every replica shares (local disk or Redis) and the manager that runs
this replica's jobs through the same restoration path as ``POST /restore``."""

from __future__ import annotations

from collections.abc import Callable

from service.jobs.local import LocalJobStore
from service.jobs.manager import (
    JobFailure,
    JobManager,
    JobOutput,
    QueueFullError,
    WebhookPolicy,
)
from service.jobs.model import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    TERMINAL,
    JobRecord,
    Progress,
)
from service.jobs.store import JobStore, ResultTooLargeError
from service.jobs.webhook import WebhookRefusedError, check_webhook_url
from service.settings import Settings

__all__ = [
    "CANCELLED",
    "FAILED",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "TERMINAL",
    "JobFailure",
    "JobManager",
    "JobOutput",
    "JobRecord",
    "JobStore",
    "LocalJobStore",
    "Progress",
    "QueueFullError",
    "ResultTooLargeError",
    "WebhookPolicy",
    "WebhookRefusedError",
    "build_job_manager",
    "check_webhook_url",
    "open_job_store",
]


def open_job_store(settings: Settings) -> JobStore:
    """The store ``DIFFMAMBA_JOB_STORE`` names (not started yet)."""
    common = {"ttl_s": settings.job_ttl_s, "max_bytes": settings.job_store_max_bytes,
              "poll_s": settings.job_poll_s}
    if settings.job_store == "local":
        return LocalJobStore(settings.job_dir, **common)
    from service.jobs.redis_store import RedisJobStore  # the optional [redis] extra

    return RedisJobStore(settings.job_store, **common)


def build_job_manager(settings: Settings,
                      on_active: Callable[[int], None] | None = None) -> JobManager:
    return JobManager(
        open_job_store(settings), concurrency=settings.job_concurrency,
        queue_size=settings.job_queue_size, lease_s=settings.job_lease_s,
        poll_s=settings.job_poll_s, on_active=on_active,
        webhooks=WebhookPolicy(retries=settings.job_webhook_retries,
                               backoff_s=settings.job_webhook_backoff_s,
                               timeout_s=settings.job_webhook_timeout_s))
