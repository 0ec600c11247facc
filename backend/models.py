"""The data model. The database is the source of truth for every job's state.

Ids are 32-character hex strings (uuid4), portable between SQLite and PostgreSQL. Every row that a
user can see carries an ``owner``; every query is filtered by it.
Traces are not stored one row per value: each chain's series is a sequence of float32 chunks
(``TraceChunk``), appended while a job runs.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCTimestamp(TypeDecorator):
    """A moment in time, stored in UTC and always read back timezone-aware.

    PostgreSQL keeps the zone (``timestamptz``); SQLite keeps none and hands back naive values.
    This type is where that difference ends: values are converted to UTC when written and marked
    UTC when read, so every datetime the code sees, compares or subtracts is aware, on either
    database. (An aggregate such as ``max(finished_at)`` keeps the column's type, so it is aware too.)
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: every stored time is an aware UTC datetime (utcnow())")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCTimestamp(), dict[str, Any]: JSON, list[Any]: JSON}


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


JOB_STATUSES = tuple(status.value for status in JobStatus)  # in lifecycle order: queued first


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), index=True)  # first characters, shown in listings
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    scopes: Mapped[list[Any]] = mapped_column(default=list)  # e.g. ["admin", "run-code"]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str | None] = mapped_column(String(300), default=None)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(20))  # "safetensors" | "npz"
    n: Mapped[int] = mapped_column(Integer)
    x_shape: Mapped[list[Any]] = mapped_column()
    y_shape: Mapped[list[Any]] = mapped_column()
    x_dtype: Mapped[str] = mapped_column(String(20))
    y_dtype: Mapped[str] = mapped_column(String(20))
    storage_key: Mapped[str] = mapped_column(String(200))  # relative path inside ARTIFACT_DIR
    # "xy": tensors x and y. "tokens": input_ids [N, T] with optional attention_mask [N, T] and labels
    # ([N, T] or [N]); then x_* describe input_ids and y_* the labels (input_ids when there are none:
    # a causal LM's targets are its inputs).
    kind: Mapped[str] = mapped_column(String(20), default="xy", server_default="xy")
    tensors: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # tokens: name -> {shape, dtype}
    max_token_id: Mapped[int | None] = mapped_column(BigInteger, default=None)  # tokens: largest input id
    seq_len: Mapped[int | None] = mapped_column(Integer, default=None)  # tokens: T
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_owner_collection_step", "owner", "collection", "step"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str | None] = mapped_column(String(300), default=None)
    collection: Mapped[str | None] = mapped_column(String(300), default=None)
    step: Mapped[int | None] = mapped_column(Integer, default=None)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(20))  # "safetensors" | "pt" | "pt2"
    architecture: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # None for pt2
    num_params: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Batch(Base):
    """One request to score many checkpoints: a job per checkpoint (``Job.batch_id``).

    Its status, counts and progress are derived from its jobs; the row keeps what was asked.
    """

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_batches_owner_idempotency_key"),
        Index("ix_batches_owner_created_at", "owner", "created_at"),
        Index("ix_batches_owner_collection", "owner", "collection"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    collection: Mapped[str | None] = mapped_column(String(300), default=None)  # None: given by checkpoint ids
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    loss: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict[str, Any]] = mapped_column()  # as requested
    force: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    num_jobs: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_status_queued_at", "status", "queued_at"),
        Index("ix_jobs_owner_created_at", "owner", "created_at"),
        Index("ix_jobs_owner_fingerprint", "owner", "fingerprint"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="RESTRICT"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    loss: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict[str, Any]] = mapped_column()  # as requested (LLCConfig fields)
    resolved_config: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # as run
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), default=None,
                                                 index=True)
    # sha256 of (checkpoint sha256, dataset sha256, loss, config with constant defaults filled in):
    # identical work has the same fingerprint (api.jobs.dedupe).
    fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    # A job answered from an earlier succeeded job of the same owner: its id (traces are read from it).
    reused_from: Mapped[str | None] = mapped_column(String(32), default=None)

    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued.value, index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # fraction of all sampling steps done
    draws_done: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    error: Mapped[str | None] = mapped_column(Text, default=None)
    # Result summary: llc_mean, llc_std, llc_per_chain, init_loss, nbeta, n, diagnostics, warnings, timings.
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    llc_mean: Mapped[float | None] = mapped_column(Float, default=None)
    llc_std: Mapped[float | None] = mapped_column(Float, default=None)


class JobChain(Base):
    """Per-chain summary of a finished job."""

    __tablename__ = "job_chains"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    chain: Mapped[int] = mapped_column(Integer, primary_key=True)
    llc: Mapped[float | None] = mapped_column(Float, default=None)
    loss_mean: Mapped[float | None] = mapped_column(Float, default=None)
    num_draws: Mapped[int] = mapped_column(Integer, default=0)
    diverged: Mapped[bool] = mapped_column(Boolean, default=False)
    message: Mapped[str | None] = mapped_column(Text, default=None)


class TraceChunk(Base):
    """A run of consecutive draws of one chain's series, as little-endian float32 bytes."""

    __tablename__ = "trace_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    chain: Mapped[int] = mapped_column(Integer, primary_key=True)
    series: Mapped[str] = mapped_column(String(20), primary_key=True)  # "loss" | "llc"
    start_draw: Mapped[int] = mapped_column(Integer, primary_key=True)
    num_draws: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
