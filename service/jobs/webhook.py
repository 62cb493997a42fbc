"""Completion webhooks: only to allowed hosts, retried with exponential backoff.

The allow-list is what keeps a job submitter from making the service POST to arbitrary
addresses (internal ones included): a URL whose host is not on it is refused at submit time.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("service.jobs")
# A URL carries no raw space or control character (RFC 3986); the HTTP client refuses them only
# when the job ends, so they are refused at submit.
UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")


class WebhookRefusedError(ValueError):
    """The URL is malformed or its host is not on the allow-list."""


def check_webhook_url(url: str, allowed_hosts: Sequence[str]) -> str:
    """``url`` if it may be called; an entry ``.example.com`` allows every subdomain."""
    if not allowed_hosts:
        raise WebhookRefusedError(
            "webhooks are disabled on this server: DIFFMAMBA_JOB_WEBHOOK_HOSTS is empty")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise WebhookRefusedError(f"webhook: not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise WebhookRefusedError(f"webhook: need an http(s) URL with a host, got {url!r}")
    if UNSAFE_URL_CHARS.search(url):
        raise WebhookRefusedError(f"webhook: a space or control character in {url!r}")
    for entry in (h.strip().lower() for h in allowed_hosts):
        if host == entry or (entry.startswith(".") and host.endswith(entry)):
            return url
    raise WebhookRefusedError(
        f"webhook: host {host!r} is not on the allow-list (DIFFMAMBA_JOB_WEBHOOK_HOSTS)")


async def deliver_webhook(url: str, payload: dict[str, Any], *, retries: int,
                          backoff_s: float, timeout_s: float) -> bool:
    """POST ``payload`` as JSON until a 2xx answer; ``retries`` more tries after the first,
    waiting ``backoff_s`` * 2**n between them. True when delivered."""
    import httpx

    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        for attempt in range(retries + 1):
            try:
                response = await client.post(url, json=payload,
                                             headers={"X-Diffmamba-Event": "job.finished"})
                if response.is_success:
                    logger.info("job %s: webhook delivered to %s (try %d)", payload.get("id"),
                                url, attempt + 1)
                    return True
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < retries:
                delay = backoff_s * 2**attempt
                logger.warning("job %s: webhook %s failed (%s), retry in %.1f s",
                               payload.get("id"), url, problem, delay)
                await asyncio.sleep(delay)
        logger.error("job %s: webhook %s not delivered after %d tries (%s)", payload.get("id"),
                     url, retries + 1, problem)
        return False
