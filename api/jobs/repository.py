"""Every query the job endpoints run, each one filtered by the caller's owner.

State transitions made by workers, the reaper and the dispatcher (which act on a job id, not on
behalf of an owner) live in ``backend.lifecycle``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, func, or_, select, update

from api.repository import OwnedRepository
from backend.models import Checkpoint, Dataset, Job, JobStatus, TraceChunk, utcnow


class JobRepository(OwnedRepository[Job]):
    model = Job

    # -- reads ---------------------------------------------------------------------------------

    def get_checkpoint(self, checkpoint_id: str) -> Checkpoint | None:
        return self.session.scalar(self.owned(Checkpoint).where(Checkpoint.id == checkpoint_id))

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        return self.session.scalar(self.owned(Dataset).where(Dataset.id == dataset_id))

    def get_by_idempotency_key(self, key: str) -> Job | None:
        return self.first(Job.idempotency_key == key)

    def find_reusable(self, fingerprint: str) -> Job | None:
        """The most recent succeeded job with this fingerprint (``api.jobs.dedupe``): the original run,
        not a reuse of it."""
        return self.session.scalar(
            self.owned()
            .where(Job.fingerprint == fingerprint, Job.status == JobStatus.succeeded.value, Job.reused_from.is_(None))
            .order_by(Job.finished_at.desc(), Job.id)
            .limit(1)
        )

    def count_unfinished(self) -> int:
        """Jobs of this owner still waiting or running: the work a per-owner cap limits."""
        return self.session.scalar(
            select(func.count())
            .select_from(Job)
            .where(self.mine(), Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))
        ) or 0

    def list(
        self,
        *,
        limit: int,
        status: str | None = None,
        checkpoint_id: str | None = None,
        before: tuple[datetime, str] | None = None,
    ) -> list[Job]:
        """Newest first, ordered by (created_at, id) so that a cursor is stable under inserts."""
        query = self.owned()
        if status is not None:
            query = query.where(Job.status == status)
        if checkpoint_id is not None:
            query = query.where(Job.checkpoint_id == checkpoint_id)
        if before is not None:
            created_at, job_id = before
            query = query.where(
                or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
            )
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        return list(self.session.scalars(query))

    def has_traces(self, job_id: str) -> bool:
        owned = select(Job.id).where(self.mine(), Job.id == job_id)
        return self.session.scalar(
            select(func.count()).select_from(TraceChunk).where(TraceChunk.job_id.in_(owned.scalar_subquery()))
        ) > 0

    def trace_chunks(self, job_id: str) -> list[TraceChunk]:
        owned = select(Job.id).where(self.mine(), Job.id == job_id)
        return list(
            self.session.scalars(
                select(TraceChunk)
                .where(TraceChunk.job_id.in_(owned.scalar_subquery()))
                .order_by(TraceChunk.series, TraceChunk.chain, TraceChunk.start_draw)
            )
        )

    # -- writes --------------------------------------------------------------------------------

    def add(self, job: Job) -> Job:
        job.owner = self.owner
        self.session.add(job)
        self.session.flush()
        return job

    def cancel_if_queued(self, job_id: str) -> bool:
        """queued -> cancelled, atomically (a worker may be claiming it right now)."""
        now = utcnow()
        result = self.session.execute(
            update(Job).execution_options(synchronize_session=False)
            .where(self.mine(), Job.id == job_id, Job.status == JobStatus.queued.value)
            .values(status=JobStatus.cancelled.value, cancel_requested=True, finished_at=now,
                    error="cancelled before it started")
        )
        return result.rowcount == 1

    def request_cancel_if_running(self, job_id: str) -> bool:
        """Flag a running job; its runner notices within seconds and marks it cancelled."""
        result = self.session.execute(
            update(Job).execution_options(synchronize_session=False)
            .where(self.mine(), Job.id == job_id, Job.status == JobStatus.running.value)
            .values(cancel_requested=True)
        )
        return result.rowcount == 1
