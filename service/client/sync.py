"""The blocking client: ``Client(base_url).restore(image, task="derain") -> bytes``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

from service.client import _common as c
from service.client.errors import (
    JobCancelled,
    JobFailed,
    ServiceError,
    Timeout,
)


class Client:
    """One connection pool to the service; retries 503 / 429 (honouring Retry-After) and
    connection failures up to ``retries`` times with exponential backoff."""

    def __init__(self, base_url: str = c.DEFAULT_URL, *, api_key: str | None = None,
                 timeout: float | None = c.DEFAULT_TIMEOUT_S,
                 retries: int = c.DEFAULT_RETRIES) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url, self.retries = base_url.rstrip("/"), retries
        self._http = httpx.Client(base_url=self.base_url, headers=c.headers_for(api_key),
                                  timeout=c.timeout_for(timeout))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ transport

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                if attempt == self.retries or not c.should_retry_transport(method, exc):
                    raise c.transport_error(exc) from exc
                delay = c.retry_delay(attempt, None)
                c.log_retry(method, path, delay, f"{type(exc).__name__}")
                time.sleep(delay)
                continue
            if response.status_code not in c.RETRY_STATUSES or attempt == self.retries:
                return c.check(response)
            error = c.error_of(response)
            delay = c.retry_delay(attempt, error)
            c.log_retry(method, path, delay, f"{error.status} {error.error}")
            time.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the API

    def tasks(self) -> list[dict[str, Any]]:
        """The served tasks (``GET /v1/tasks``): kind, scale, config, default steps, card."""
        return self._request("GET", "/v1/tasks").json()["tasks"]

    def restore(self, image: c.ImageInput, task: str = "derain", *, steps: int | None = None,
                seed: int | None = None, format: str | None = None,
                tile: int | None = None) -> bytes:
        """The restored image's bytes (``POST /restore``)."""
        data, media_type = c.image_body(image)
        return self._request("POST", "/restore", content=data,
                             params=c.restore_params(task, steps, seed, format, tile),
                             headers={"Content-Type": media_type}).content

    def submit(self, image: c.ImageInput, task: str = "derain", *, steps: int | None = None,
               seed: int | None = None, format: str | None = None, tile: int | None = None,
               webhook: str | None = None) -> c.Job:
        """Start an async job (``POST /v1/jobs``)."""
        data, media_type = c.image_body(image)
        response = self._request(
            "POST", "/v1/jobs", content=data, headers={"Content-Type": media_type},
            params=c.restore_params(task, steps, seed, format, tile, webhook=webhook))
        status = response.json()
        return c.Job(status["id"], status["state"], status, response.headers.get("location", ""))

    def status(self, job_id: c.Job | str) -> dict[str, Any]:
        """The job's state, progress, timings and error (``GET /v1/jobs/{id}``)."""
        return self._request("GET", f"/v1/jobs/{c.job_id_of(job_id)}").json()

    def result(self, job_id: c.Job | str) -> bytes:
        """A succeeded job's image (``Conflict`` while it is not)."""
        return self._request("GET", f"/v1/jobs/{c.job_id_of(job_id)}/result").content

    def cancel(self, job_id: c.Job | str) -> dict[str, Any]:
        """Cancel a queued or running job; -> its status (cancelled, or still running while
        the replica that runs it acts on the request)."""
        return self._request("DELETE", f"/v1/jobs/{c.job_id_of(job_id)}").json()

    def wait(self, job_id: c.Job | str, timeout: float | None = None,
             poll: float = 0.2) -> bytes:
        """Poll until the job ends; -> the image. ``JobFailed`` / ``JobCancelled`` when it did
        not succeed, ``Timeout`` after ``timeout`` seconds (None: no limit)."""
        job_id = c.job_id_of(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(poll, 0.05)
        while True:
            status = self.status(job_id)
            if status["state"] in c.TERMINAL:
                return self._outcome(job_id, status)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise Timeout(None, "wait_timeout",
                              f"job {job_id} still {status['state']} after {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, poll)

    def events(self, job_id: c.Job | str) -> Iterator[dict[str, Any]]:
        """The job's server-sent events as dicts (``{"event": "state" | "progress", **status}``)
        until its terminal state; reconnects when a stream ends early (a draining replica)."""
        job_id = c.job_id_of(job_id)
        for attempt in range(self.retries + 1):
            try:
                with self._http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                    if not response.is_success:
                        response.read()
                        raise c.error_of(response)
                    decoder = c.SSEDecoder()
                    for line in response.iter_lines():
                        event = decoder.feed(line)
                        if event is not None:
                            yield event
                            if event.get("state") in c.TERMINAL:
                                return
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise c.transport_error(exc) from exc
            time.sleep(c.retry_delay(attempt, None))
        raise ServiceError(None, "events_ended", f"the event stream of job {job_id} kept"
                           " ending before the job did")

    def _outcome(self, job_id: str, status: dict[str, Any]) -> bytes:
        if status["state"] == "succeeded":
            return self.result(job_id)
        error = status.get("error") or {}
        cls = JobCancelled if status["state"] == "cancelled" else JobFailed
        raise cls(None, error.get("error", status["state"]), error.get("detail", ""))

