"""Job logic behind the endpoints: submission (validation, idempotency, per-owner cap), listing,
cancellation and trace assembly. HTTP-free: it raises domain errors (``api.errors``) with messages a
user can act on.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import Principal
from api.errors import Conflict, Forbidden, NotFound, TooManyRequests, Unprocessable
from api.jobs import dedupe, fit
from api.jobs.repository import JobRepository
from api.jobs.schemas import JobCreate, check_config_against
from api.pagination import decode_cursor, page
from api.types import is_valid_id
from backend import queue
from backend.models import Checkpoint, Dataset, Job, JobStatus
from backend.settings import Settings

MAX_IDEMPOTENCY_KEY_LENGTH = 200


def not_found(kind: str, object_id: str) -> NotFound:
    return NotFound(f"{kind} '{object_id}' not found")


@dataclass
class Traces:
    job_id: str
    init_loss: float | None
    loss: np.ndarray  # float32, chains x draws
    llc: np.ndarray

    @property
    def num_chains(self) -> int:
        return int(self.loss.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.loss.shape[1])


class JobService:
    def __init__(self, session: Session, settings: Settings, principal: Principal) -> None:
        self.session = session
        self.settings = settings
        self.principal = principal
        self.repo = JobRepository(session, principal.owner)

    # -- submit ------------------------------------------------------------------------------------

    def submit(self, body: JobCreate, idempotency_key: str | None) -> tuple[Job, bool]:
        """Returns (job, created). The row is committed before the job is enqueued."""
        config = body.config_dict()
        if idempotency_key is not None:
            idempotency_key = self._check_idempotency_key(idempotency_key)
            existing = self.repo.get_by_idempotency_key(idempotency_key)
            if existing is not None:
                return self._replay(existing, body, config, idempotency_key), False

        checkpoint = self.repo.get_checkpoint(body.checkpoint_id) if is_valid_id(body.checkpoint_id) else None
        if checkpoint is None:
            raise not_found("checkpoint", body.checkpoint_id)
        dataset = self.repo.get_dataset(body.dataset_id) if is_valid_id(body.dataset_id) else None
        if dataset is None:
            raise not_found("dataset", body.dataset_id)
        self.check_can_run([checkpoint])
        self.check_config(config, dataset)
        self.check_fits([checkpoint], dataset, body.loss, config)
        self.check_capacity(1)

        job = self.new_job(checkpoint, dataset, body.loss, config, force=body.force, idempotency_key=idempotency_key)
        try:
            self.repo.add(job)
            self.session.commit()
        except IntegrityError:
            # Another request with the same Idempotency-Key won the race: answer as its replay.
            self.session.rollback()
            existing = self.repo.get_by_idempotency_key(idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return self._replay(existing, body, config, idempotency_key), False
        if job.status == JobStatus.queued.value:
            queue.enqueue(self.settings, job.id)
        return job, True

    # -- shared with batches -------------------------------------------------------------------------

    def check_can_run(self, checkpoints: list[Checkpoint]) -> None:
        for checkpoint in checkpoints:
            if checkpoint.format == "pt2" and not self.principal.can("run-code"):
                raise Forbidden(f"checkpoint '{checkpoint.id}' is a .pt2 archive, which runs code when loaded: "
                           "running it needs a key with the 'run-code' scope")

    def check_config(self, config: dict, dataset: Dataset) -> None:
        problem = check_config_against(config, n=dataset.n, max_draws=self.settings.max_draws)
        if problem is not None:
            raise Unprocessable(problem)

    def check_fits(self, checkpoints: list[Checkpoint], dataset: Dataset, loss: str, config: dict) -> None:
        """The dataset fits the loss and each model, and each model fits the worker's memory (api/jobs/fit.py)."""
        for checkpoint in checkpoints:
            fit.check_fits(self.settings, checkpoint, dataset, loss, config)

    def check_capacity(self, new_jobs: int) -> None:
        cap = self.settings.max_queued_jobs_per_owner
        unfinished = self.repo.count_unfinished()
        if unfinished + new_jobs > cap:
            if new_jobs == 1:
                detail = (f"you already have {cap} unfinished (queued or running) jobs, the limit per owner; "
                          "wait for some to finish or cancel some")
            else:
                detail = (f"{new_jobs} new jobs on top of your {unfinished} unfinished (queued or running) ones "
                          f"would exceed the limit of {cap} per owner; wait for some to finish or cancel some")
            raise TooManyRequests(detail)

    def new_job(self, checkpoint: Checkpoint, dataset: Dataset, loss: str, config: dict, *, force: bool,
                idempotency_key: str | None = None, batch_id: str | None = None) -> Job:
        """A queued job, or (unless ``force``) an already-succeeded one reusing identical earlier work."""
        fields = dict(checkpoint_id=checkpoint.id, dataset_id=dataset.id, loss=loss, config=config,
                      idempotency_key=idempotency_key, batch_id=batch_id,
                      fingerprint=dedupe.fingerprint(checkpoint, dataset, loss, config))
        if not force:
            source = self.repo.find_reusable(fields["fingerprint"])
            if source is not None:
                return dedupe.reused_job(source, **fields)
        return Job(**fields)

    @staticmethod
    def _check_idempotency_key(key: str) -> str:
        key = key.strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
            raise Unprocessable(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY_LENGTH} printable characters")
        return key

    @staticmethod
    def _replay(existing: Job, body: JobCreate, config: dict, key: str) -> Job:
        same = (existing.batch_id is None and existing.checkpoint_id == body.checkpoint_id and existing.dataset_id == body.dataset_id
                and existing.loss == body.loss and (existing.config or {}) == config)
        if not same:
            raise Conflict(f"Idempotency-Key '{key}' was already used for a different request (job {existing.id}); "
                       "use a new key for a new job")
        return existing

    # -- read --------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        # A malformed id cannot exist; it never reaches the database (PostgreSQL refuses NUL bytes, say).
        job = self.repo.get(job_id) if is_valid_id(job_id) else None
        if job is None:
            raise not_found("job", job_id)
        return job

    def list(self, *, limit: int, status_filter: str | None, checkpoint_id: str | None,
             cursor: str | None) -> tuple[list[Job], str | None]:
        if checkpoint_id is not None and not is_valid_id(checkpoint_id):
            return [], None  # no job can have that checkpoint
        before = decode_cursor(cursor) if cursor else None
        jobs = self.repo.list(limit=limit + 1, status=status_filter, checkpoint_id=checkpoint_id, before=before)
        return page(jobs, limit)

    # -- cancel ------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        """queued -> cancelled at once; running -> cancel_requested (its runner stops within seconds)."""
        job = self.get(job_id)
        if self.repo.cancel_if_queued(job_id) or self.repo.request_cancel_if_running(job_id):
            self.session.commit()
            self.session.refresh(job)
            return job
        self.session.refresh(job)
        raise Conflict(f"job '{job_id}' has already finished ({job.status}); there is nothing to cancel")

    # -- traces ------------------------------------------------------------------------------------

    def traces(self, job_id: str) -> Traces:
        job = self.get(job_id)
        if job.status != JobStatus.succeeded.value:
            if job.status in (JobStatus.queued.value, JobStatus.running.value):
                why = (f"is {job.status} ({job.progress:.0%} done); traces are available once it has succeeded")
            else:
                why = f"{job.status}; it recorded no traces"
            raise Conflict(f"job '{job_id}' {why}")
        chunks = self.repo.trace_chunks(job.reused_from or job_id)  # a reused result keeps its source's traces
        if not chunks:
            raise Conflict(f"job '{job_id}' has no stored traces")
        series: dict[str, dict[int, list[np.ndarray]]] = {"loss": {}, "llc": {}}
        for chunk in chunks:
            values = np.frombuffer(chunk.data, dtype="<f4", count=chunk.num_draws)
            series.setdefault(chunk.series, {}).setdefault(chunk.chain, []).append(values)
        num_chains = 1 + max(chunk.chain for chunk in chunks)
        arrays = {name: _stack(per_chain, num_chains) for name, per_chain in series.items() if name in ("loss", "llc")}
        width = max(a.shape[1] for a in arrays.values())
        arrays = {name: _pad(a, width) for name, a in arrays.items()}
        init_loss = (job.result or {}).get("init_loss")
        return Traces(job_id=job.id, init_loss=init_loss, loss=arrays["loss"], llc=arrays["llc"])


def _stack(per_chain: dict[int, list[np.ndarray]], num_chains: int) -> np.ndarray:
    rows = [np.concatenate(per_chain[c]) if c in per_chain else np.empty(0, np.float32) for c in range(num_chains)]
    width = max((len(r) for r in rows), default=0)
    return np.stack([_pad(r[None, :], width)[0] for r in rows]) if rows else np.empty((0, 0), np.float32)


def _pad(array: np.ndarray, width: int) -> np.ndarray:
    if array.shape[1] == width:
        return array.astype(np.float32, copy=False)
    padded = np.full((array.shape[0], width), np.nan, dtype=np.float32)
    padded[:, : array.shape[1]] = array
    return padded


# -- trace encodings ---------------------------------------------------------------------------------


def _numbers(row: np.ndarray) -> str:
    """Comma-separated values with 9 significant digits (enough to read back the exact float32);
    JSON has no NaN/Inf, so non-finite values are null."""
    values = row.tolist()
    if np.isfinite(row).all():
        return ",".join([f"{v:.9g}" for v in values])
    return ",".join([f"{v:.9g}" if math.isfinite(v) else "null" for v in values])


def traces_json(traces: Traces) -> str:
    def matrix(array: np.ndarray) -> str:
        return "[" + ",".join("[" + _numbers(row) + "]" for row in array) + "]"

    head = json.dumps({"job_id": traces.job_id, "num_chains": traces.num_chains, "num_draws": traces.num_draws,
                       "init_loss": traces.init_loss})
    return head[:-1] + f', "loss": {matrix(traces.loss)}, "llc": {matrix(traces.llc)}}}'


def traces_csv_lines(traces: Traces):  # noqa: ANN201 - a generator of str
    yield "chain,draw,loss,llc\n"
    for c in range(traces.num_chains):
        loss, llc = traces.loss[c].tolist(), traces.llc[c].tolist()
        yield "".join(f"{c},{d},{loss[d]:.9g},{llc[d]:.9g}\n" for d in range(traces.num_draws))


def traces_npz(traces: Traces) -> bytes:
    buffer = io.BytesIO()
    init_loss = np.float64(traces.init_loss if traces.init_loss is not None else np.nan)
    np.savez(buffer, loss=traces.loss, llc=traces.llc, init_loss=init_loss)
    return buffer.getvalue()
