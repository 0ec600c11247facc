"""Every query the batch endpoints run, each one filtered by the caller's owner."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select, update

from api.repository import OwnedRepository
from backend.models import Batch, Checkpoint, Job, JobStatus, utcnow

FINISHED = (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value)


class BatchRepository(OwnedRepository[Batch]):
    model = Batch

    def get_by_idempotency_key(self, key: str) -> Batch | None:
        return self.first(Batch.idempotency_key == key)

    def latest_of_collection(self, collection: str) -> Batch | None:
        return self.session.scalar(
            self.owned().where(Batch.collection == collection).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(1)
        )

    def checkpoints_of_collection(self, collection: str) -> list[Checkpoint]:
        return list(self.session.scalars(
            self.owned(Checkpoint).where(Checkpoint.collection == collection)
            .order_by(Checkpoint.step.is_(None), Checkpoint.step, Checkpoint.name, Checkpoint.id)))

    def checkpoints_by_id(self, ids: list[str]) -> dict[str, Checkpoint]:
        found: dict[str, Checkpoint] = {}
        for start in range(0, len(ids), 500):  # keep IN lists bounded
            chunk = ids[start:start + 500]
            found.update((c.id, c) for c in self.session.scalars(
                self.owned(Checkpoint).where(Checkpoint.id.in_(chunk))))
        return found

    def list(self, *, limit: int, collection: str | None, cursor: str | None) -> list[Batch]:
        return self.page(limit, cursor, *([] if collection is None else [Batch.collection == collection]))

    def summaries(self, batch_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Per batch: job counts by status, the sum of progress (finished = 1), reused jobs, last finish."""
        out: dict[str, dict[str, Any]] = {b: {"counts": {}, "progress": 0.0, "reused": 0, "last_finished": None}
                                          for b in batch_ids}
        if not batch_ids:
            return out
        progress = case((Job.status.in_(FINISHED), 1.0), else_=Job.progress)
        rows = self.session.execute(
            select(Job.batch_id, Job.status, func.count(), func.sum(progress), func.count(Job.reused_from),
                   func.max(Job.finished_at))
            .where(self.mine(Job), Job.batch_id.in_(batch_ids))
            .group_by(Job.batch_id, Job.status))
        for batch_id, status, count, progress_sum, reused, last_finished in rows:
            summary = out[batch_id]
            summary["counts"][status] = int(count)
            summary["progress"] += float(progress_sum or 0.0)
            summary["reused"] += int(reused or 0)
            if last_finished is not None and (summary["last_finished"] is None
                                              or last_finished > summary["last_finished"]):
                summary["last_finished"] = last_finished
        return out

    def result_rows(self, batch_id: str) -> list[tuple[Job, Checkpoint]]:
        """One (job, checkpoint) per checkpoint, ordered by step (unknown steps last), then name."""
        return list(self.session.execute(
            select(Job, Checkpoint).join(Checkpoint, Checkpoint.id == Job.checkpoint_id)
            .where(self.mine(Job), Job.batch_id == batch_id)
            .order_by(Checkpoint.step.is_(None), Checkpoint.step, Checkpoint.name, Checkpoint.id)).all())

    def job_ids(self, batch_id: str) -> list[str]:
        return list(self.session.scalars(select(Job.id).where(self.mine(Job), Job.batch_id == batch_id)))

    def cancel_queued(self, batch_id: str) -> int:
        result = self.session.execute(
            update(Job).execution_options(synchronize_session=False)
            .where(self.mine(Job), Job.batch_id == batch_id, Job.status == JobStatus.queued.value)
            .values(status=JobStatus.cancelled.value, cancel_requested=True, finished_at=utcnow(),
                    error="cancelled before it started (its batch was cancelled)"))
        return result.rowcount

    def request_cancel_running(self, batch_id: str) -> int:
        result = self.session.execute(
            update(Job).execution_options(synchronize_session=False)
            .where(self.mine(Job), Job.batch_id == batch_id, Job.status == JobStatus.running.value)
            .values(cancel_requested=True))
        return result.rowcount
