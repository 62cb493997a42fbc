"""The asyncio client: the same methods as :class:`service.client.Client`, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from service.client import _common as c
from service.client.errors import JobCancelled, JobFailed, ServiceError, Timeout


class AsyncClient:
    """One connection pool to the service; retries 503 / 429 (honouring Retry-After) and
    connection failures up to ``retries`` times with exponential backoff."""

    def __init__(self, base_url: str = c.DEFAULT_URL, *, api_key: str | None = None,
                 timeout: float | None = c.DEFAULT_TIMEOUT_S,
                 retries: int = c.DEFAULT_RETRIES) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url, self.retries = base_url.rstrip("/"), retries
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=c.headers_for(api_key),
                                       timeout=c.timeout_for(timeout))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ transport

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                if attempt == self.retries or not c.should_retry_transport(method, exc):
                    raise c.transport_error(exc) from exc
                delay = c.retry_delay(attempt, None)
                c.log_retry(method, path, delay, f"{type(exc).__name__}")
                await asyncio.sleep(delay)
                continue
            if response.status_code not in c.RETRY_STATUSES or attempt == self.retries:
                return c.check(response)
            error = c.error_of(response)
            delay = c.retry_delay(attempt, error)
            c.log_retry(method, path, delay, f"{error.status} {error.error}")
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the API

    async def tasks(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/v1/tasks")).json()["tasks"]

    async def restore(self, image: c.ImageInput, task: str = "derain", *,
                      steps: int | None = None, seed: int | None = None,
                      format: str | None = None, tile: int | None = None) -> bytes:
        data, media_type = c.image_body(image)
        response = await self._request("POST", "/restore", content=data,
                                       params=c.restore_params(task, steps, seed, format, tile),
                                       headers={"Content-Type": media_type})
        return response.content

    async def submit(self, image: c.ImageInput, task: str = "derain", *,
                     steps: int | None = None, seed: int | None = None,
                     format: str | None = None, tile: int | None = None,
                     webhook: str | None = None) -> c.Job:
        data, media_type = c.image_body(image)
        response = await self._request(
            "POST", "/v1/jobs", content=data, headers={"Content-Type": media_type},
            params=c.restore_params(task, steps, seed, format, tile, webhook=webhook))
        status = response.json()
        return c.Job(status["id"], status["state"], status, response.headers.get("location", ""))

    async def status(self, job_id: c.Job | str) -> dict[str, Any]:
        return (await self._request("GET", f"/v1/jobs/{c.job_id_of(job_id)}")).json()

    async def result(self, job_id: c.Job | str) -> bytes:
        return (await self._request("GET", f"/v1/jobs/{c.job_id_of(job_id)}/result")).content

    async def cancel(self, job_id: c.Job | str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/v1/jobs/{c.job_id_of(job_id)}")).json()

    async def wait(self, job_id: c.Job | str, timeout: float | None = None,
                   poll: float = 0.2) -> bytes:
        job_id = c.job_id_of(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(poll, 0.05)
        while True:
            status = await self.status(job_id)
            if status["state"] in c.TERMINAL:
                return await self._outcome(job_id, status)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise Timeout(None, "wait_timeout",
                              f"job {job_id} still {status['state']} after {timeout:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, poll)

    async def events(self, job_id: c.Job | str) -> AsyncIterator[dict[str, Any]]:
        job_id = c.job_id_of(job_id)
        for attempt in range(self.retries + 1):
            try:
                async with self._http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                    if not response.is_success:
                        await response.aread()
                        raise c.error_of(response)
                    decoder = c.SSEDecoder()
                    async for line in response.aiter_lines():
                        event = decoder.feed(line)
                        if event is not None:
                            yield event
                            if event.get("state") in c.TERMINAL:
                                return
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise c.transport_error(exc) from exc
            await asyncio.sleep(c.retry_delay(attempt, None))
        raise ServiceError(None, "events_ended", f"the event stream of job {job_id} kept"
                           " ending before the job did")

    async def _outcome(self, job_id: str, status: dict[str, Any]) -> bytes:
        if status["state"] == "succeeded":
            return await self.result(job_id)
        error = status.get("error") or {}
        cls = JobCancelled if status["state"] == "cancelled" else JobFailed
        raise cls(None, error.get("error", status["state"]), error.get("detail", ""))
