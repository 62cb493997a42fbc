"""A Python client of the restoration service, sync and asyncio, on httpx.

    from service.client import Client

    with Client("http://127.0.0.1:8000") as client:
        png = client.restore("rainy.png", task="derain", seed=0)
        job = client.submit("big.png", task="denoise")
        png = client.wait(job, timeout=600)

Errors are typed (:mod:`service.client.errors`): ``except Unavailable`` after the retries of a
503, ``NotFound`` for an unknown task or job, ``InvalidRequest`` for a bad image or parameter.
"""

from service.client._common import Job
from service.client.async_ import AsyncClient
from service.client.errors import (
    Conflict,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    NotFound,
    RateLimited,
    ServerError,
    ServiceError,
    Timeout,
    Unauthorized,
    Unavailable,
)
from service.client.sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "InvalidRequest",
    "Job",
    "JobCancelled",
    "JobFailed",
    "NotFound",
    "RateLimited",
    "ServerError",
    "ServiceError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
]
