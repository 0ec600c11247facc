"""Request and response models for jobs, and the validation of LLC configs.

A submitted config is checked twice, without torch: by ``LLCConfigIn`` (types, the names the
estimator accepts, and this server's caps, which also document the fields in the OpenAPI schema),
then by the estimator's own ``LLCConfig`` (``estimator/config.py``, plain Python), whose rules and
names are the only source of truth. The worker later builds the same ``LLCConfig``, resolves the
defaults (e.g. epsilon from the local curvature) and stores them as ``resolved_config``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.models import JOB_STATUSES
from estimator.config import CHAIN_MODES, DTYPES, LOSSES, SAMPLERS, LLCConfig

LossName = Literal[LOSSES]
MAX_CHAINS = 64
# Upper bounds that keep one job's step count finite even before settings-dependent checks run.
MAX_BURNIN_STEPS = 10_000_000
MAX_STEPS_BETWEEN_DRAWS = 10_000


class LLCConfigIn(BaseModel):
    """The ``LLCConfig`` fields a job may set; omitted fields take the estimator's defaults.

    Fields left out (or null) are resolved by the worker with the real ``LLCConfig`` (for example
    epsilon from the curvature at w*, nbeta = n / log n); the job's ``resolved_config`` shows the result.
    """

    model_config = ConfigDict(extra="forbid")

    sampler: Literal[SAMPLERS] | None = Field(
        None, description="SG-MCMC kernel: sgld (the paper's), rmsprop_sgld or sgnht.")
    epsilon: float | None = Field(None, gt=0, le=10.0, allow_inf_nan=False,
                                  description="Step size; null = chosen from the local curvature.")
    gamma: float | None = Field(None, gt=0, le=1e9, allow_inf_nan=False,
                                description="Localization strength around w*.")
    nbeta: float | None = Field(None, gt=0, le=1e12, allow_inf_nan=False,
                                description="n * beta (inverse temperature times n); null = n / log n.")
    num_chains: int | None = Field(None, ge=1, le=MAX_CHAINS, description=f"Independent chains, 1..{MAX_CHAINS}.")
    num_draws: int | None = Field(None, ge=1, description="Draws per chain (at most the server's max_draws).")
    num_burnin_steps: int | None = Field(None, ge=0, le=MAX_BURNIN_STEPS, description="Steps discarded per chain.")
    num_steps_bw_draws: int | None = Field(None, ge=1, le=MAX_STEPS_BETWEEN_DRAWS,
                                           description="Sampler steps between recorded draws.")
    batch_size: int | None = Field(None, ge=1, description="Minibatch size (at most the dataset's n).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed; same seed, same result.")
    device: str | None = Field(None, max_length=12,
                               description="auto, cpu, cuda or cuda:N; 'auto' lets the worker choose (--device).")
    dtype: Literal[DTYPES] | None = Field(None, description="Computation dtype.")
    chain_mode: Literal[CHAIN_MODES] | None = Field(None, description="How chains run.")
    max_chains_per_chunk: int | None = Field(None, ge=1, le=MAX_CHAINS,
                                             description="Vectorise at most this many chains at once (memory).")
    target_bias: float | None = Field(None, gt=0, lt=0.5, allow_inf_nan=False,
                                      description="Discretisation bias the automatic epsilon aims at (0.01 = 1%).")
    rhat_threshold: float | None = Field(None, gt=1, le=100, allow_inf_nan=False,
                                         description="R-hat above this gives a warning.")
    min_ess: float | None = Field(None, ge=0, le=1e9, allow_inf_nan=False,
                                  description="Bulk ESS below this gives a warning.")
    mala_band: tuple[float, float] | None = Field(None, description="Healthy MALA acceptance band (low, high).")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                raise ValueError(f"unknown config field(s) {', '.join(unknown)}; "
                                 f"LLCConfig fields are: {', '.join(cls.model_fields)}")
        return data

    @model_validator(mode="after")
    def _the_estimators_rules(self) -> LLCConfigIn:
        """Whatever the estimator would refuse is refused here, with its message."""
        fields = {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None}
        LLCConfig.from_dict(fields)  # raises ValueError("LLCConfig.<field> must be ...")
        return self


LLC_CONFIG_FIELDS = tuple(LLCConfigIn.model_fields)


class JobCreate(BaseModel):
    """``POST /v1/jobs`` body."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_id: str = Field(min_length=1, max_length=64)
    dataset_id: str = Field(min_length=1, max_length=64)
    loss: LossName = Field(description="Per-sample loss (negative log-likelihood) the LLC is measured for.")
    config: LLCConfigIn = Field(default_factory=LLCConfigIn)
    force: bool = Field(False, description="Run even if the same work (same checkpoint and dataset contents, "
                                           "loss and config) already succeeded; by default its result is reused.")

    def config_dict(self) -> dict[str, Any]:
        """Only the fields the caller set (explicit nulls dropped): what is stored as ``config``."""
        fields = self.config.model_dump(exclude_unset=True, mode="json")
        return {k: v for k, v in fields.items() if v is not None}


def check_config_against(config: dict[str, Any], *, n: int, max_draws: int) -> str | None:
    """Bounds that depend on the dataset and the server settings. Returns a message naming the field, or None."""
    num_draws = config.get("num_draws")
    if num_draws is not None and num_draws > max_draws:
        return f"config.num_draws={num_draws} exceeds this server's maximum of {max_draws} draws per chain"
    batch_size = config.get("batch_size")
    if batch_size is not None and batch_size > n:
        return f"config.batch_size={batch_size} is larger than the dataset (n={n}); use at most {n}"
    return None


# -- responses --------------------------------------------------------------------------------------


class ChainWarning(BaseModel):
    code: str
    message: str
    chain: int | None = None


class JobResultPublic(BaseModel):
    llc_mean: float | None
    llc_std: float | None
    llc_per_chain: list[float | None]
    init_loss: float | None
    nbeta: float | None
    n: int | None
    diagnostics: dict[str, Any] = Field(default_factory=dict)
    warnings: list[ChainWarning] = Field(default_factory=list)
    timings: dict[str, Any] = Field(default_factory=dict)
    chain_mode: str | None = None
    chain_mode_reason: str | None = Field(default=None, description=(
        "Why the chains ran vectorised or one at a time, and whether the gradient kernel ran as a traced "
        "graph (reused from an earlier job of the same architecture in the same process, or traced anew)."))


class JobTimings(BaseModel):
    created_at: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    duration_s: float | None = Field(description="finished_at - started_at (or so far, while running)")


class JobPublic(BaseModel):
    id: str
    status: Literal[JOB_STATUSES]
    cancel_requested: bool
    checkpoint_id: str
    dataset_id: str
    loss: str
    config: dict[str, Any] = Field(description="The config as submitted.")
    resolved_config: dict[str, Any] | None = Field(description="The full config the worker ran (defaults resolved).")
    idempotency_key: str | None
    batch_id: str | None = Field(None, description="The batch this job belongs to, if any.")
    reused_from: str | None = Field(
        None, description="Set when this job's result (and traces) were reused from an identical earlier job.")
    progress: float = Field(ge=0, le=1)
    draws_done: int
    attempts: int
    worker: str | None
    timings: JobTimings
    error: str | None
    result: JobResultPublic | None
    has_traces: bool

    @classmethod
    def from_row(cls, job: Any, *, has_traces: bool | None = None) -> JobPublic:
        started, finished = job.started_at, job.finished_at
        duration = None
        if started is not None:
            end = finished or (datetime.now(UTC) if job.status == "running" else None)
            duration = (end - started).total_seconds() if end is not None else None
        result = None
        if job.result is not None:
            summary = job.result
            result = JobResultPublic(
                llc_mean=summary.get("llc_mean"),
                llc_std=summary.get("llc_std"),
                llc_per_chain=summary.get("llc_per_chain") or [],
                init_loss=summary.get("init_loss"),
                nbeta=summary.get("nbeta"),
                n=summary.get("n"),
                diagnostics=summary.get("diagnostics") or {},
                warnings=summary.get("warnings") or [],
                timings=summary.get("timings") or {},
                chain_mode=summary.get("chain_mode"),
                chain_mode_reason=summary.get("chain_mode_reason"),
            )
        return cls(
            id=job.id,
            status=job.status,
            cancel_requested=bool(job.cancel_requested),
            checkpoint_id=job.checkpoint_id,
            dataset_id=job.dataset_id,
            loss=job.loss,
            config=job.config or {},
            resolved_config=job.resolved_config,
            idempotency_key=job.idempotency_key,
            batch_id=getattr(job, "batch_id", None),
            reused_from=getattr(job, "reused_from", None),
            progress=min(1.0, max(0.0, float(job.progress or 0.0))),
            draws_done=int(job.draws_done or 0),
            attempts=int(job.attempts or 0),
            worker=job.worker,
            timings=JobTimings(
                created_at=job.created_at,
                queued_at=job.queued_at,
                started_at=started,
                finished_at=finished,
                heartbeat_at=job.heartbeat_at,
                duration_s=duration,
            ),
            error=job.error,
            result=result,
            has_traces=job.status == "succeeded" if has_traces is None else has_traces,
        )


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page.")
