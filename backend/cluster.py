"""What the whole deployment is doing, read from the shared database (and the broker's worker
registry): the facts behind ``/metrics`` and ``/v1/status``.

Every API process computes these at request time from the same shared stores, so any process (on
any machine) answers the same, whichever process did the work. Nothing here is per-owner: these are
aggregate counts; ``status.py`` adds the caller's own running jobs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from backend import workers as worker_registry
from backend.models import JOB_STATUSES, Checkpoint, Dataset, Job, JobStatus
from backend.settings import Settings

log = logging.getLogger("lambdahat.observability")

FINISHED_STATUSES = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value)
# Seconds. LLC jobs run from seconds (tiny models) to hours (large ones, many draws).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)


def job_counts(session: Session) -> dict[str, int]:
    """Jobs by status; every known status is present (0 when there are none)."""
    counts = dict.fromkeys(JOB_STATUSES, 0)
    for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[status] = int(count)
    return counts


@dataclass(frozen=True)
class QueueStats:
    depth: int
    oldest_queued_at: datetime | None

    def oldest_wait_s(self, now: datetime) -> float:
        return max(0.0, (now - self.oldest_queued_at).total_seconds()) if self.oldest_queued_at else 0.0


def queue_stats(session: Session) -> QueueStats:
    depth, oldest = session.execute(
        select(func.count(), func.min(Job.queued_at)).where(Job.status == JobStatus.queued.value)
    ).one()
    return QueueStats(int(depth or 0), oldest)


def stale_running_count(session: Session, heartbeat_timeout: float) -> int:
    """Running jobs whose heartbeat is older than the timeout: the reaper should be releasing them."""
    cutoff = datetime.now(UTC) - timedelta(seconds=heartbeat_timeout)
    return int(session.scalar(
        select(func.count()).select_from(Job).where(Job.status == JobStatus.running.value, Job.heartbeat_at < cutoff)
    ) or 0)


@dataclass
class WorkersView:
    workers: list[worker_registry.WorkerSeen]
    registry: str  # "ok", "embedded" (no broker: busy workers only, from jobs), or "unreachable: ..."


def workers_seen(session: Session, settings: Settings, *, now: float | None = None) -> WorkersView:
    now = time.time() if now is None else now
    since = datetime.fromtimestamp(now - worker_registry.WORKER_WINDOW_S, UTC)
    from_jobs = worker_registry.seen_in_jobs(session, since=since)
    if settings.embedded:
        return WorkersView(worker_registry.merge(from_jobs), "embedded")
    try:
        from_registry = worker_registry.read_registry(settings.broker_url, now=now)
        state = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, and the jobs' heartbeats still count
        from_registry, state = [], f"unreachable: {type(exc).__name__}: {exc}"
    recent = [w for w in from_registry if now - w.last_heartbeat <= worker_registry.WORKER_WINDOW_S]
    return WorkersView(worker_registry.merge(recent, from_jobs), state)


@dataclass
class DurationHistogram:
    """Cumulative bucket counts per status: ``buckets[status][i]`` jobs took at most ``DURATION_BUCKETS[i]`` s."""

    buckets: dict[str, list[int]] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    total_s: dict[str, float] = field(default_factory=dict)


def _duration_seconds(session: Session) -> Any:
    """``finished_at - started_at`` in seconds, in the database's own dialect."""
    if session.get_bind().dialect.name == "sqlite":
        seconds = (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    else:
        seconds = func.extract("epoch", Job.finished_at - Job.started_at)
    # Start and finish may be written by different machines (a reaper failing a job): never negative.
    return case((seconds < 0, 0.0), else_=seconds)


def duration_histogram(session: Session) -> DurationHistogram:
    """Run time (start of the last attempt to the end) of every finished job that started, bucketed in SQL.

    Each run's duration is computed once (a materialized CTE) and given the index of the first bucket
    it fits; the database returns one row per (status, bucket index), cumulated here."""
    runs = (
        select(Job.status.label("status"), _duration_seconds(session).label("seconds"))
        .where(Job.status.in_(FINISHED_STATUSES), Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .cte("runs")
        .prefix_with("MATERIALIZED")
    )
    bucket = case(*[(runs.c.seconds <= bound, index) for index, bound in enumerate(DURATION_BUCKETS)],
                  else_=len(DURATION_BUCKETS)).label("bucket")
    query = select(runs.c.status, bucket, func.count(), func.coalesce(func.sum(runs.c.seconds), 0.0)) \
        .group_by(runs.c.status, bucket)
    histogram = DurationHistogram()
    per_bucket: dict[str, list[int]] = {}
    for status in FINISHED_STATUSES:
        per_bucket[status] = [0] * (len(DURATION_BUCKETS) + 1)  # the last: above every bound
        histogram.count[status] = 0
        histogram.total_s[status] = 0.0
    for status, index, count, total in session.execute(query):
        per_bucket.setdefault(status, [0] * (len(DURATION_BUCKETS) + 1))[int(index)] += int(count)
        histogram.count[status] = histogram.count.get(status, 0) + int(count)
        histogram.total_s[status] = histogram.total_s.get(status, 0.0) + float(total or 0.0)
    for status, counts in per_bucket.items():
        running_total, cumulative = 0, []
        for count in counts[:-1]:
            running_total += count
            cumulative.append(running_total)
        histogram.buckets[status] = cumulative
    return histogram


@dataclass(frozen=True)
class Throughput:
    worker: str
    job_id: str
    finished_at: datetime
    steps_per_s: float | None  # sampler steps per second (all chains advance together)
    chain_steps_per_s: float | None  # steps_per_s x chains


def latest_throughput(session: Session, *, since: datetime) -> list[Throughput]:
    """Per worker, the SGLD speed its most recent succeeded job reported (``result.timings``)."""
    latest = (
        select(Job.worker.label("worker"), func.max(Job.finished_at).label("finished_at"))
        .where(Job.status == JobStatus.succeeded.value, Job.worker.is_not(None), Job.finished_at >= since)
        .group_by(Job.worker)
        .subquery()
    )
    rows = session.execute(
        select(Job.worker, Job.id, Job.finished_at, Job.result)
        .join(latest, (Job.worker == latest.c.worker) & (Job.finished_at == latest.c.finished_at))
        .where(Job.status == JobStatus.succeeded.value)
    ).all()
    found: dict[str, Throughput] = {}
    for worker, job_id, finished_at, result in rows:
        timings = (result or {}).get("timings") or {}
        found[worker] = Throughput(worker, job_id, finished_at, _positive(timings.get("steps_per_s")),
                                   _positive(timings.get("chain_steps_per_s")))
    return sorted(found.values(), key=lambda t: t.worker)


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and number != float("inf") else None


@dataclass(frozen=True)
class UploadTotals:
    count: int  # rows (uploads users keep)
    bytes: int  # their sizes summed (identical content uploaded twice counts twice)
    stored_bytes: int  # distinct content actually stored (uploads are content-addressed)


def upload_totals(session: Session) -> dict[str, UploadTotals]:
    totals = {}
    for kind, table in (("checkpoints", Checkpoint), ("datasets", Dataset)):
        count, size = session.execute(select(func.count(), func.coalesce(func.sum(table.size_bytes), 0))).one()
        distinct = select(table.sha256, func.max(table.size_bytes).label("size")).group_by(table.sha256).subquery()
        stored = session.scalar(select(func.coalesce(func.sum(distinct.c.size), 0)))
        totals[kind] = UploadTotals(int(count or 0), int(size or 0), int(stored or 0))
    return totals
