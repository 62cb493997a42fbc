"""A job's record: what every replica reads and writes, as JSON, through the job store.

One flat record per job keeps the store simple (one key per job in Redis, one dict entry and
one file locally) and makes the HTTP status a plain view of it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled")
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


@dataclass
class Progress:
    """Network passes done / total over all tiles; ``step`` counts finished rounds (sampling
    steps for diffusion, 1 for a one-pass model) out of ``steps``."""

    passes_done: int = 0
    passes_total: int = 0
    tiles: int = 0
    step: int = 0
    steps: int = 0

    def as_dict(self) -> dict[str, Any]:
        fraction = self.passes_done / self.passes_total if self.passes_total else 0.0
        return {**asdict(self), "fraction": round(fraction, 4)}


@dataclass
class JobRecord:
    id: str
    task: str
    #: The query parameters as given (steps, seed, format, tile); the seed is fixed at submit.
    params: dict[str, Any]
    state: str = QUEUED
    progress: Progress = field(default_factory=Progress)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    #: ``{"error": code, "detail": text}`` once failed or cancelled.
    error: dict[str, str] | None = None
    #: The replica that runs the job (its lease and cancel flag are keyed by job, not replica).
    owner: str = ""
    webhook: str | None = None
    #: The name of the API key that submitted the job: only that key may see it (None: no
    #: keys configured, so anyone holding the id may).
    client_key: str | None = None
    #: Of the stored result: media type, the /restore headers, size in bytes.
    media_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    result_bytes: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["progress"] = asdict(self.progress)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        fields = dict(data)
        fields["progress"] = Progress(**fields.get("progress", {}))
        return cls(**fields)

    def view(self, ttl_s: float) -> dict[str, Any]:
        """The public status (GET /v1/jobs/{id}, events, webhooks): no owner, no stored headers."""
        timings: dict[str, float] = {}
        if self.started_at is not None:
            timings["queued_s"] = round(self.started_at - self.created_at, 4)
        if self.finished_at is not None:
            begin = self.started_at if self.started_at is not None else self.created_at
            timings["run_s"] = round(self.finished_at - begin, 4)
            timings["total_s"] = round(self.finished_at - self.created_at, 4)
        out: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "state": self.state,
            "params": self.params,
            "progress": self.progress.as_dict(),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "timings": timings,
            "error": self.error,
            "expires_at": None if self.finished_at is None else self.finished_at + ttl_s,
            "links": {"self": f"/v1/jobs/{self.id}", "events": f"/v1/jobs/{self.id}/events"},
        }
        if self.state == SUCCEEDED:
            out["links"]["result"] = f"/v1/jobs/{self.id}/result"
            out["result"] = {"media_type": self.media_type, "bytes": self.result_bytes}
        return out
