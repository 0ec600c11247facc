"""Job state transitions made by runners, the reaper and the embedded dispatcher.

Each transition is one conditional UPDATE, so that concurrent actors (two deliveries of the same
Celery message, two reapers, a runner finishing while the reaper gives up on it) cannot both win:

    queued  --claim (attempts += 1)-->  running  --finish-->  succeeded | failed | cancelled
    running --heartbeat stale / process died--> queued (attempts kept)  or  failed (attempts >= max)
    queued  --cancel--> cancelled;  running --cancel--> cancel_requested, then cancelled by its runner

A runner's ``attempt`` number (the value of ``attempts`` its claim produced) is its fencing token:
heartbeats and the final write only apply while the row is still ``running`` with that attempt, so
a runner that was given up on (and whose job was re-claimed elsewhere) can never overwrite the
newer attempt's state. Torch-free: the API process uses this module too.

UPDATEs run with ``synchronize_session=False``: the ORM would otherwise re-evaluate their WHERE
clauses against loaded objects in Python (SQLite hands back naive datetimes, which cannot be
compared with aware ones); callers re-read the rows they need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from backend.models import Job, JobChain, JobStatus, TraceChunk, utcnow

QUEUED, RUNNING = JobStatus.queued.value, JobStatus.running.value
SUCCEEDED, FAILED, CANCELLED = JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value


# -- runner side --------------------------------------------------------------------------------


def claim(session: Session, job_id: str, worker: str) -> int | None:
    """queued -> running. Returns this run's attempt number, or None when someone else has it."""
    now = utcnow()
    result = session.execute(
        update(Job).execution_options(synchronize_session=False)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(status=RUNNING, attempts=Job.attempts + 1, worker=worker, started_at=now, heartbeat_at=now,
                finished_at=None, progress=0.0, draws_done=0)
    )
    if result.rowcount != 1:
        return None
    return session.scalar(select(Job.attempts).where(Job.id == job_id))


@dataclass(frozen=True)
class HeartbeatReply:
    still_ours: bool  # False: the job was re-queued or finished by someone else; stop working on it
    cancel_requested: bool


def heartbeat(session: Session, job_id: str, attempt: int, *, progress: float, draws_done: int) -> HeartbeatReply:
    result = session.execute(
        update(Job).execution_options(synchronize_session=False)
        .where(Job.id == job_id, Job.status == RUNNING, Job.attempts == attempt)
        .values(heartbeat_at=utcnow(), progress=max(0.0, min(1.0, progress)), draws_done=draws_done)
    )
    if result.rowcount != 1:
        return HeartbeatReply(still_ours=False, cancel_requested=False)
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return HeartbeatReply(still_ours=True, cancel_requested=bool(cancel))


def set_resolved_config(session: Session, job_id: str, attempt: int, resolved_config: dict[str, Any]) -> None:
    session.execute(
        update(Job).execution_options(synchronize_session=False)
        .where(Job.id == job_id, Job.status == RUNNING, Job.attempts == attempt)
        .values(resolved_config=resolved_config)
    )


def finish_succeeded(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    summary: dict[str, Any],
    resolved_config: dict[str, Any] | None,
    chains: Sequence[dict[str, Any]],
    chunks: Sequence[dict[str, Any]],
    draws_done: int,
) -> bool:
    """Result, per-chain rows, trace chunks and status in ONE transaction (the caller's).

    Rows left by an earlier attempt are deleted first, so a re-run keeps exactly one set.
    Returns False (and writes nothing) if this attempt no longer owns the job.
    """
    values: dict[str, Any] = dict(
        status=SUCCEEDED, finished_at=utcnow(), heartbeat_at=utcnow(), progress=1.0, draws_done=draws_done,
        error=None, result=summary, llc_mean=summary.get("llc_mean"), llc_std=summary.get("llc_std"),
    )
    if resolved_config is not None:
        values["resolved_config"] = resolved_config
    result = session.execute(
        update(Job).execution_options(synchronize_session=False).where(Job.id == job_id, Job.status == RUNNING, Job.attempts == attempt).values(**values)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    session.execute(delete(TraceChunk).where(TraceChunk.job_id == job_id))
    session.execute(delete(JobChain).where(JobChain.job_id == job_id))
    if chains:
        session.execute(insert(JobChain), [dict(row, job_id=job_id) for row in chains])
    if chunks:
        session.execute(insert(TraceChunk), [dict(row, job_id=job_id) for row in chunks])
    return True


def finish_unsuccessfully(session: Session, job_id: str, attempt: int, *, status: str, error: str) -> bool:
    """running -> failed | cancelled for this attempt."""
    assert status in (FAILED, CANCELLED)
    result = session.execute(
        update(Job).execution_options(synchronize_session=False)
        .where(Job.id == job_id, Job.status == RUNNING, Job.attempts == attempt)
        .values(status=status, finished_at=utcnow(), error=error)
    )
    return result.rowcount == 1


def clear_partial_results(session: Session, job_id: str) -> None:
    """Drop chain rows and trace chunks an earlier, interrupted attempt may have left."""
    session.execute(delete(TraceChunk).where(TraceChunk.job_id == job_id))
    session.execute(delete(JobChain).where(JobChain.job_id == job_id))


# -- giving up on a lost attempt ------------------------------------------------------------------


@dataclass(frozen=True)
class Released:
    job_id: str
    outcome: str  # "requeued" | "failed" | "cancelled"
    attempts: int


def _describe_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "never"


def release_lost_attempt(
    session: Session,
    job: Job,
    *,
    max_attempts: int,
    why: str,
    extra_conditions: Sequence[Any] = (),
    refund_attempt: bool = False,
) -> Released | None:
    """A running attempt is gone (its worker died, or stopped heart-beating): decide what happens.

    cancel requested -> cancelled; attempts used up -> failed with the reason; otherwise -> queued
    again (attempts kept, unless ``refund_attempt``: a graceful shutdown is not the job's fault).
    Conditional on the row still being this running attempt; returns None if it was not.
    """
    conditions = [Job.id == job.id, Job.status == RUNNING, Job.attempts == job.attempts, *extra_conditions]
    now = utcnow()
    last_seen = f"last seen {_describe_time(job.heartbeat_at)} on worker {job.worker or '?'}"
    if job.cancel_requested:
        outcome = CANCELLED
        values = dict(status=CANCELLED, finished_at=now, error=f"cancelled; {why} ({last_seen})")
    elif job.attempts >= max_attempts and not refund_attempt:
        outcome = FAILED
        times = "once" if job.attempts == 1 else f"{job.attempts} times"
        values = dict(
            status=FAILED, finished_at=now,
            error=(f"the worker running this job died {times} ({why}); {last_seen}. "
                   f"Giving up after {max_attempts} attempts: the job may be crashing its worker "
                   "(out of memory?) - try fewer chains, a smaller batch_size, or a machine with more memory."),
        )
    else:
        outcome = "requeued"
        values = dict(
            status=QUEUED, queued_at=now, started_at=None, worker=None, progress=0.0, draws_done=0,
            error=f"attempt {job.attempts} was lost ({why}; {last_seen}); re-queued",
        )
        if refund_attempt:
            values["attempts"] = Job.attempts - 1
    result = session.execute(update(Job).execution_options(synchronize_session=False).where(*conditions).values(**values))
    if result.rowcount != 1:
        return None
    attempts = job.attempts - 1 if (refund_attempt and outcome == "requeued") else job.attempts
    return Released(job.id, outcome, attempts)


def stale_running_jobs(session: Session, *, cutoff: datetime, limit: int = 500) -> list[Job]:
    return list(
        session.scalars(
            select(Job)
            .where(Job.status == RUNNING, Job.heartbeat_at < cutoff)
            .order_by(Job.heartbeat_at)
            .limit(limit)
        )
    )


def running_jobs(session: Session, *, worker: str | None = None) -> list[Job]:
    query = select(Job).where(Job.status == RUNNING)
    if worker is not None:
        query = query.where(Job.worker == worker)
    return list(session.scalars(query))


def queued_job_ids(session: Session, *, limit: int, exclude: Sequence[str] = (),
                   queued_before: datetime | None = None) -> list[str]:
    """Oldest first."""
    query = select(Job.id).where(Job.status == QUEUED)
    if exclude:
        query = query.where(Job.id.not_in(list(exclude)))
    if queued_before is not None:
        query = query.where(Job.queued_at < queued_before)
    return list(session.scalars(query.order_by(Job.queued_at, Job.id).limit(limit)))


# -- fair scheduling ------------------------------------------------------------------------------


def fair_queued_job_ids(session: Session, *, limit: int, exclude: Sequence[str] = ()) -> list[str]:
    """The next ``limit`` queued jobs in fair order: round-robin across owners, so that one owner's
    500-checkpoint batch cannot starve another owner's single job.

    Each pick goes to the owner with the fewest running (plus already picked) jobs; ties go to the
    owner served least recently (the latest ``started_at`` among its jobs; never served first), then
    to the owner whose oldest queued job is oldest. Within an owner, oldest queued job first.
    """
    excluded = list(exclude)
    queued = select(Job.owner, func.min(Job.queued_at)).where(Job.status == QUEUED)
    if excluded:
        queued = queued.where(Job.id.not_in(excluded))
    oldest = {owner: at for owner, at in session.execute(queued.group_by(Job.owner))}
    if not oldest:
        return []
    owners = list(oldest)
    running = {owner: count for owner, count in session.execute(
        select(Job.owner, func.count()).where(Job.status == RUNNING, Job.owner.in_(owners)).group_by(Job.owner))}
    served = {owner: at for owner, at in session.execute(
        select(Job.owner, func.max(Job.started_at)).where(Job.owner.in_(owners), Job.started_at.is_not(None))
        .group_by(Job.owner))}
    never = datetime.min.replace(tzinfo=UTC)
    load = {owner: int(running.get(owner, 0)) for owner in owners}
    pending: dict[str, list[str]] = {}
    picked: list[str] = []
    # A pick serves its owner "now": later than any recorded start, in pick order (true round-robin).
    last_served: dict[str, tuple] = {o: (0, served.get(o) or never) for o in owners}
    while len(picked) < limit and owners:
        owner = min(owners, key=lambda o: (load[o], last_served[o], oldest[o] or never, o))
        if owner not in pending:
            query = select(Job.id).where(Job.status == QUEUED, Job.owner == owner)
            if excluded:
                query = query.where(Job.id.not_in(excluded))
            pending[owner] = list(session.scalars(query.order_by(Job.queued_at, Job.id).limit(limit)))
        if not pending[owner]:
            owners.remove(owner)
            continue
        picked.append(pending[owner].pop(0))
        load[owner] += 1
        last_served[owner] = (1, len(picked))
    return picked


def claim_next_fair(session: Session, worker: str, *, candidates: int = 8) -> tuple[str, int] | None:
    """Claim the fairest queued job (see ``fair_queued_job_ids``): (job id, attempt), or None when no
    job is queued. Each claim is the conditional UPDATE of ``claim``; a job another worker claimed
    first is skipped for the next candidate."""
    for _ in range(3):
        job_ids = fair_queued_job_ids(session, limit=candidates)
        if not job_ids:
            return None
        for job_id in job_ids:
            attempt = claim(session, job_id, worker)
            if attempt is not None:
                return job_id, attempt
    return None


def touch_queued(session: Session, job_id: str, *, queued_before: datetime) -> bool:
    """Mark a long-waiting queued job as re-enqueued now (one of several concurrent reapers wins)."""
    result = session.execute(
        update(Job).execution_options(synchronize_session=False)
        .where(Job.id == job_id, Job.status == QUEUED, Job.queued_at < queued_before)
        .values(queued_at=utcnow())
    )
    return result.rowcount == 1


def fail_unstarted(session: Session, job_id: str, error: str) -> bool:
    """A queued job whose process could not even start (repeatedly): fail it with the reason."""
    result = session.execute(
        update(Job).execution_options(synchronize_session=False)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(status=FAILED, finished_at=utcnow(), error=error)
    )
    return result.rowcount == 1


def seconds_ago(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)
