"""The lambdahat Python client: ``Client`` (blocking) and ``AsyncClient`` (asyncio), plus its errors.

It talks to the server over HTTP only (httpx) and never imports server code; torch is imported only
when you hand it torch objects. See docs/client.md.
"""

from client.errors import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    JobFailed,
    LambdahatError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from client.models import Batch, Checkpoint, Dataset, Job, JobResult
from client.sdk import AsyncClient, Client

__all__ = [
    "AsyncClient",
    "Batch",
    "Checkpoint",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "Forbidden",
    "Job",
    "JobFailed",
    "JobResult",
    "LambdahatError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "ValidationFailed",
    "WaitTimeout",
]
