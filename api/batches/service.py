"""Batch logic behind the endpoints: creation (one job per checkpoint, all in one transaction,
enqueued after commit), summaries, results, cancellation. Reuses the job service's checks and its
dedupe, so a batch item behaves exactly like a single job submitted with the same body.
"""

from __future__ import annotations

import csv
import io
import json

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.batches.repository import BatchRepository
from api.batches.schemas import RESULT_COLUMNS, BatchCreate, BatchPublic, BatchResultRow, to_public
from api.deps import Principal
from api.errors import Conflict, NotFound, Unprocessable
from api.jobs.service import JobService, not_found
from api.pagination import page
from api.types import is_valid_id
from backend import queue
from backend.models import Batch, Checkpoint, JobStatus
from backend.settings import Settings


class BatchService:
    def __init__(self, session: Session, settings: Settings, principal: Principal) -> None:
        self.session = session
        self.settings = settings
        self.principal = principal
        self.repo = BatchRepository(session, principal.owner)
        self.jobs = JobService(session, settings, principal)

    # -- create ------------------------------------------------------------------------------------

    def create(self, body: BatchCreate, idempotency_key: str | None) -> tuple[Batch, bool]:
        """Returns (batch, created). Every job row is committed (in one transaction) before any is enqueued."""
        config = body.config_dict()
        if idempotency_key is not None:
            idempotency_key = self.jobs._check_idempotency_key(idempotency_key)
            existing = self.repo.get_by_idempotency_key(idempotency_key)
            if existing is not None:
                return self._replay(existing, body, config, idempotency_key), False

        dataset = self.jobs.repo.get_dataset(body.dataset_id) if is_valid_id(body.dataset_id) else None
        if dataset is None:
            raise not_found("dataset", body.dataset_id)
        checkpoints = self._checkpoints(body)
        self.jobs.check_can_run(checkpoints)
        self.jobs.check_config(config, dataset)
        self.jobs.check_fits(checkpoints, dataset, body.loss, config)
        self.jobs.check_capacity(len(checkpoints))

        batch = Batch(owner=self.principal.owner, collection=body.collection, dataset_id=dataset.id, loss=body.loss,
                      config=config, force=body.force, idempotency_key=idempotency_key, num_jobs=len(checkpoints))
        try:
            self.session.add(batch)
            self.session.flush()
            jobs = [self.jobs.new_job(c, dataset, body.loss, config, force=body.force, batch_id=batch.id)
                    for c in checkpoints]
            for job in jobs:
                job.owner = self.principal.owner
            self.session.add_all(jobs)
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            existing = self.repo.get_by_idempotency_key(idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return self._replay(existing, body, config, idempotency_key), False
        queue.enqueue(self.settings, [j.id for j in jobs if j.status == JobStatus.queued.value])
        return batch, True

    def _checkpoints(self, body: BatchCreate) -> list[Checkpoint]:
        if body.collection is not None:
            checkpoints = self.repo.checkpoints_of_collection(body.collection)
            if not checkpoints:
                raise Unprocessable(f"collection '{body.collection}' has no checkpoints; upload some with "
                                           f"collection='{body.collection}' first")
            return checkpoints
        ids = body.checkpoint_ids or []
        found = self.repo.checkpoints_by_id([i for i in ids if is_valid_id(i)])
        missing = [i for i in ids if i not in found]
        if missing:
            shown = ", ".join(f"'{i}'" for i in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise NotFound(f"checkpoint(s) {shown} not found")
        return [found[i] for i in ids]

    def _replay(self, existing: Batch, body: BatchCreate, config: dict, key: str) -> Batch:
        same = (existing.dataset_id == body.dataset_id and existing.loss == body.loss
                and (existing.config or {}) == config and existing.collection == body.collection
                and bool(existing.force) == body.force)
        if same and body.checkpoint_ids is not None:
            same = sorted(self.repo_job_checkpoints(existing.id)) == sorted(body.checkpoint_ids)
        if not same:
            raise Conflict(f"Idempotency-Key '{key}' was already used for a different request (batch {existing.id}); "
                       "use a new key for a new batch")
        return existing

    def repo_job_checkpoints(self, batch_id: str) -> list[str]:
        return [job.checkpoint_id for job, _ in self.repo.result_rows(batch_id)]

    # -- read --------------------------------------------------------------------------------------

    def get(self, batch_id: str) -> Batch:
        batch = self.repo.get(batch_id) if is_valid_id(batch_id) else None
        if batch is None:
            raise not_found("batch", batch_id)
        return batch

    def public(self, batches: list[Batch]) -> list[BatchPublic]:
        summaries = self.repo.summaries([b.id for b in batches])
        return [to_public(b, s["counts"], s["progress"], s["reused"], s["last_finished"])
                for b in batches for s in (summaries[b.id],)]

    def list(self, *, limit: int, collection: str | None, cursor: str | None) -> tuple[list[Batch], str | None]:
        return page(self.repo.list(limit=limit, collection=collection, cursor=cursor), limit)

    def results(self, batch_id: str) -> list[BatchResultRow]:
        self.get(batch_id)
        rows = []
        for job, checkpoint in self.repo.result_rows(batch_id):
            result = job.result or {}
            rows.append(BatchResultRow(
                step=checkpoint.step, checkpoint_id=checkpoint.id, name=checkpoint.name, job_id=job.id,
                status=job.status, llc_mean=job.llc_mean, llc_std=job.llc_std,
                warnings=list(result.get("warnings") or []), reused_from=job.reused_from,
                error=job.error if job.status in (JobStatus.failed.value, JobStatus.cancelled.value) else None))
        return rows

    # -- cancel ------------------------------------------------------------------------------------

    def cancel(self, batch_id: str) -> Batch:
        """Queued jobs -> cancelled at once; running ones -> cancel_requested (they stop within seconds)."""
        batch = self.get(batch_id)
        cancelled = self.repo.cancel_queued(batch_id)
        stopping = self.repo.request_cancel_running(batch_id)
        if not cancelled and not stopping:
            self.session.rollback()
            raise Conflict(f"batch '{batch_id}' has already finished; there is nothing to cancel")
        self.session.commit()
        return batch


def results_csv(rows: list[BatchResultRow]) -> str:
    """One line per checkpoint; ``warnings`` as 'code: message' joined by ' | '."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        warnings = " | ".join(f"{w.get('code', '')}: {w.get('message', '')}" for w in row.warnings)
        writer.writerow([
            "" if row.step is None else row.step, row.checkpoint_id, row.name or "", row.job_id, row.status,
            "" if row.llc_mean is None else repr(row.llc_mean), "" if row.llc_std is None else repr(row.llc_std),
            warnings, row.reused_from or "", row.error or ""])
    return buffer.getvalue()


def results_json(rows: list[BatchResultRow]) -> str:
    return json.dumps([row.model_dump() for row in rows])
