"""The client's own view of the server's objects (never imported from the server).

Models are lenient: fields the client does not know are kept (``extra="allow"``) and reachable as
attributes and through ``model_dump()``, so a newer server never breaks an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class _ServerObject(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str


class Dataset(_ServerObject):
    name: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    format: str | None = None
    n: int | None = None
    x_shape: list[int] | None = None
    y_shape: list[int] | None = None
    x_dtype: str | None = None
    y_dtype: str | None = None
    kind: str | None = None  # "xy", or "tokens" (input_ids [N, T], optional attention_mask and labels)
    max_token_id: int | None = None  # token datasets: the largest id in input_ids
    seq_len: int | None = None  # token datasets: T
    created_at: datetime | None = None


class Checkpoint(_ServerObject):
    name: str | None = None
    collection: str | None = None
    step: int | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    format: str | None = None
    architecture: dict[str, Any] | None = None
    num_params: int | None = None
    created_at: datetime | None = None


class JobResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    llc_mean: float | None = None
    llc_std: float | None = None
    llc_per_chain: list[float | None] | None = None
    init_loss: float | None = None
    nbeta: float | None = None
    n: int | None = None
    diagnostics: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    chain_mode: str | None = None
    chain_mode_reason: str | None = None
    # Each warning is a string or a structured object such as {"code": ..., "message": ...}.
    warnings: list[Any] = Field(default_factory=list)


def warning_text(warning: Any) -> str:
    """A warning as one line of text, whichever shape the server sent."""
    if isinstance(warning, dict):
        message = warning.get("message") or warning.get("msg") or warning.get("detail")
        code = warning.get("code") or warning.get("kind")
        if message and code:
            return f"{code}: {message}"
        if message or code:
            return str(message or code)
    return str(warning)


class JobTimings(BaseModel):
    model_config = ConfigDict(extra="allow")

    created_at: datetime | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    duration_s: float | None = None


class Job(_ServerObject):
    status: str
    checkpoint_id: str | None = None
    dataset_id: str | None = None
    batch_id: str | None = None
    loss: str | None = None
    config: dict[str, Any] | None = None
    resolved_config: dict[str, Any] | None = None
    idempotency_key: str | None = None
    reused_from: str | None = None  # set when the server answered from identical earlier work
    cancel_requested: bool = False
    progress: float | None = None
    draws_done: int | None = None
    attempts: int | None = None
    worker: str | None = None
    timings: JobTimings = Field(default_factory=JobTimings)
    error: str | None = None
    result: JobResult | None = None
    has_traces: bool | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class Batch(_ServerObject):
    """A batch of jobs, one per checkpoint (issue 4). ``counts`` maps each status to a number of jobs."""

    status: str | None = None
    collection: str | None = None
    dataset_id: str | None = None
    loss: str | None = None
    config: dict[str, Any] | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    total: int | None = None
    reused: int | None = None  # jobs answered from identical earlier work
    force: bool | None = None
    progress: float | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def num_jobs(self) -> int:
        return self.total if self.total is not None else sum(self.counts.values())

    @property
    def num_finished(self) -> int:
        return sum(self.counts.get(status, 0) for status in FINISHED_STATUSES)

    @property
    def finished(self) -> bool:
        if self.status is not None and self.status in FINISHED_STATUSES | {"finished", "completed"}:
            return True
        return self.num_jobs > 0 and self.num_finished >= self.num_jobs

    @property
    def succeeded(self) -> bool:
        return self.finished and self.counts.get("succeeded", 0) == self.num_jobs
