"""lambdahat: the local learning coefficient of PyTorch checkpoints, as a library and as a service.

    from lambdahat import Client, AsyncClient, estimate_llc, LLCConfig

- ``Client`` (blocking) and ``AsyncClient`` (asyncio) talk to a lambdahat server over HTTP only
  (httpx) and never import server code; torch is imported only when you hand them torch objects.
  See docs/client.md.
- ``estimate_llc``, ``LLCConfig``, ``LLCResult`` and ``calibrate`` are the estimator's
  (``estimator/``, docs/estimator.md), re-exported here; the torch-heavy ones load on first use.

``pip install lambdahat`` installs these and the ``lambdahat`` command's user commands;
``pip install "lambdahat[server]"`` adds the API, the database and the Celery worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from estimator import LLCConfig
from lambdahat.errors import (
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
from lambdahat.models import Batch, Checkpoint, Dataset, Job, JobResult
from lambdahat.sdk import AsyncClient, Client

if TYPE_CHECKING:
    from estimator import CalibrationResult, LLCResult, calibrate, estimate_llc

_FROM_ESTIMATOR = ("CalibrationResult", "LLCResult", "calibrate", "estimate_llc")

__all__ = [
    "AsyncClient",
    "Batch",
    "CalibrationResult",
    "Checkpoint",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "Forbidden",
    "Job",
    "JobFailed",
    "JobResult",
    "LLCConfig",
    "LLCResult",
    "LambdahatError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "ValidationFailed",
    "WaitTimeout",
    "calibrate",
    "estimate_llc",
]


def __getattr__(name: str) -> Any:
    # The estimator's torch-heavy names load torch on first use, not when the SDK is imported.
    if name in _FROM_ESTIMATOR:
        value = getattr(importlib.import_module("estimator"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
