"""Request and response models for batches (one LLC job per checkpoint of a collection or id list)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.jobs.schemas import LLCConfigIn, LossName
from backend.models import JOB_STATUSES

MAX_BATCH_CHECKPOINTS = 10_000


class BatchCreate(BaseModel):
    """``POST /v1/batches`` body: exactly one of ``collection`` and ``checkpoint_ids``."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    loss: LossName = Field(description="Per-sample loss (negative log-likelihood) the LLC is measured for.")
    config: LLCConfigIn = Field(default_factory=LLCConfigIn)
    collection: str | None = Field(None, min_length=1, max_length=300,
                                   description="Score every checkpoint of this collection.")
    checkpoint_ids: list[str] | None = Field(None, min_length=1, max_length=MAX_BATCH_CHECKPOINTS,
                                             description="Score these checkpoints.")
    force: bool = Field(False, description="Re-run work that already succeeded instead of reusing its result.")

    @model_validator(mode="after")
    def _one_source(self) -> BatchCreate:
        if (self.collection is None) == (self.checkpoint_ids is None):
            raise ValueError("give exactly one of 'collection' (a collection name) or 'checkpoint_ids' (a list of ids)")
        return self

    @field_validator("checkpoint_ids")
    @classmethod
    def _distinct(cls, ids: list[str] | None) -> list[str] | None:
        if ids is None:
            return ids
        too_long = [i for i in ids if not 1 <= len(i) <= 64]
        if too_long:
            raise ValueError("checkpoint ids are 1..64 characters")
        seen: set[str] = set()
        repeated = sorted({i for i in ids if i in seen or seen.add(i)})
        if repeated:
            raise ValueError(f"checkpoint_ids lists {', '.join(repeated)} more than once")
        return ids

    def config_dict(self) -> dict[str, Any]:
        fields = self.config.model_dump(exclude_unset=True, mode="json")
        return {k: v for k, v in fields.items() if v is not None}


class BatchPublic(BaseModel):
    id: str
    status: Literal[JOB_STATUSES] = Field(
        description="queued (nothing started), running (some unfinished), or once every job has finished: "
                    "succeeded (all), failed (any failed), cancelled (any cancelled, none failed).")
    collection: str | None
    dataset_id: str
    loss: str
    config: dict[str, Any]
    force: bool
    idempotency_key: str | None
    total: int = Field(description="Number of jobs (one per checkpoint).")
    counts: dict[str, int] = Field(description="Jobs by status (every status present).")
    reused: int = Field(description="Jobs answered from identical earlier work.")
    progress: float = Field(ge=0, le=1, description="Finished jobs count 1, running ones their own progress.")
    created_at: datetime
    finished_at: datetime | None = Field(description="When the last job finished (null while any is unfinished).")


def batch_status(counts: dict[str, int]) -> str:
    unfinished = counts.get("queued", 0) + counts.get("running", 0)
    if unfinished:
        started = sum(counts.get(s, 0) for s in JOB_STATUSES if s != "queued")
        return "running" if started else "queued"
    if counts.get("failed"):
        return "failed"
    if counts.get("cancelled"):
        return "cancelled"
    return "succeeded"


def to_public(batch: Any, counts: dict[str, int], progress_sum: float, reused: int,
              last_finished: datetime | None) -> BatchPublic:
    counts = {s: int(counts.get(s, 0)) for s in JOB_STATUSES}
    total = sum(counts.values())
    status = batch_status(counts)
    return BatchPublic(
        id=batch.id, status=status, collection=batch.collection, dataset_id=batch.dataset_id, loss=batch.loss,
        config=batch.config or {}, force=bool(batch.force), idempotency_key=batch.idempotency_key, total=total,
        counts=counts, reused=reused, progress=min(1.0, max(0.0, progress_sum / total)) if total else 1.0,
        created_at=batch.created_at,
        finished_at=last_finished if status not in ("queued", "running") else None,
    )


class BatchList(BaseModel):
    items: list[BatchPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page.")


class BatchResultRow(BaseModel):
    step: int | None
    checkpoint_id: str
    name: str | None
    job_id: str
    status: str
    llc_mean: float | None
    llc_std: float | None
    warnings: list[dict[str, Any]]
    reused_from: str | None
    error: str | None


RESULT_COLUMNS = ("step", "checkpoint_id", "name", "job_id", "status", "llc_mean", "llc_std", "warnings",
                  "reused_from", "error")
