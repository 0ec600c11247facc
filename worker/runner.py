"""Run one job: the code shared by the Celery task and the embedded dispatcher's job subprocess.

1. Claim the job atomically (a second delivery of the same job does nothing).
2. Start a monitor thread: it writes heartbeat + progress at a bounded rate, even while one long
   step runs, and turns "cancel requested", "time limit reached" and "this attempt was given up on"
   into a stop request that the estimator's progress callback returns to the sampler. A sampler
   that does not stop within ``HARD_STOP_GRACE_S`` of such a request ends its process.
3. Load the checkpoint and dataset (``worker.loading`` + ``backend.storage.ArtifactStore``), build the
   real ``LLCConfig`` (resolving defaults), run ``estimate_llc`` with torch's threads sized to the
   cores the job can have (``worker.cores``), resized from the progress callback as load changes.
4. In ONE transaction: result summary, per-chain rows, trace chunks, status=succeeded. Rows left by
   an earlier attempt are replaced, so a re-run keeps exactly num_chains x num_draws values.

Errors end the job as ``failed`` with a message a user can act on (exception type and message,
and which step failed); the traceback goes to the log. torch is imported inside ``run_job`` only,
never at module import, so a Celery parent process can fork children without initialising CUDA.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.exc import OperationalError

from backend import lifecycle
from backend.db import session_scope
from backend.lifecycle import CANCELLED, FAILED
from backend.logs import bind_context, job_logging
from backend.models import Checkpoint, Dataset, Job
from backend.settings import Settings, get_settings
from worker.cores import ThreadRule

log = logging.getLogger("lambdahat.runner")

TRACE_CHUNK_DRAWS = 1024  # draws per stored trace chunk (4 KiB of float32)
HARD_STOP_GRACE_S = 30.0  # after a stop request or the time limit, how long the sampler may take before the process exits
THREADS_CHECK_INTERVAL_S = 1.0  # how often a running job's thread count is checked against the rule
DB_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)  # a dropped connection or a database restart (~16 s in all)

T = TypeVar("T")

# Jobs this process has claimed: a warm job process or a Celery pool process runs many.
_jobs_claimed_in_process = 0


def in_transaction(settings: Settings, what: str, work: Callable[[Any], T]) -> T:
    """``work(session)`` in one transaction, retried in a fresh one if the database connection fails.

    Safe to repeat: a failed transaction was rolled back, and every write of the runner is
    conditional on (status, attempt). A job's result must not be lost to a connection dropped
    after hours of sampling.
    """
    for delay in (*DB_RETRY_DELAYS_S, None):
        try:
            with session_scope(settings) as session:
                return work(session)
        except OperationalError as exc:
            if delay is None:
                raise
            log.warning("%s: database error (%s); retrying in %.1f s", what, str(exc).splitlines()[0], delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    status: str  # succeeded | failed | cancelled | skipped (not claimable) | lost (given up on by the reaper)
    detail: str = ""


class StepError(Exception):
    """An error with the step that failed, shown to the user as '<step> failed: <Type>: <message>'."""

    def __init__(self, step: str, exc: BaseException) -> None:
        super().__init__(f"{step} failed: {type(exc).__name__}: {exc}")
        self.step = step


class JobMonitor(threading.Thread):
    """Heartbeat + progress writer and stop-condition watcher for one running attempt."""

    def __init__(self, settings: Settings, job_id: str, attempt: int, *, exit_with_parent: bool = False) -> None:
        super().__init__(name=f"job-monitor-{job_id[:8]}", daemon=True)
        self.settings = settings
        self.job_id = job_id
        self.attempt = attempt
        self.interval = max(0.05, min(settings.heartbeat_interval, 2.0))
        self.deadline = time.monotonic() + settings.job_time_limit
        self.parent_pid = os.getppid() if exit_with_parent else None
        self.progress = 0.0
        self.draws_done = 0
        self.stop_reason: str | None = None  # "cancelled" | "time_limit" | "lost" | "parent_gone"
        self.threads: JobThreads | None = None  # resized from the main thread, in on_progress
        self._stop_requested_at: float | None = None
        self._finished = threading.Event()

    # Called by the estimator (main thread): cheap, no I/O.
    def on_progress(self, event: Any) -> bool:
        total = max(1, int(getattr(event, "total_steps", 0) or 0))
        self.progress = min(1.0, float(getattr(event, "steps_done", 0)) / total)
        draws = list(getattr(event, "draws_done", []) or [])
        self.draws_done = int(max(draws)) if draws else 0  # a diverged chain stops counting; the rest go on
        if self.stop_reason is None and time.monotonic() > self.deadline:
            self.stop_reason = "time_limit"
        if self.threads is not None:
            self.threads.check(int(getattr(event, "steps_done", 0) or 0))
        return self.stop_reason is None

    def finish(self) -> None:
        self._finished.set()
        self.join(timeout=10)

    def run(self) -> None:
        bind_context(job_id=self.job_id)  # this thread's log records carry the job id too
        while not self._finished.wait(self.interval):
            self._beat()
            if self.parent_pid is not None and os.getppid() != self.parent_pid and self.stop_reason is None:
                log.warning("job %s: the dispatcher that started this process is gone; stopping", self.job_id)
                self.stop_reason = "parent_gone"
            if time.monotonic() > self.deadline:
                self.stop_reason = self.stop_reason or "time_limit"
            if self.stop_reason is not None:
                self._stop_requested_at = self._stop_requested_at or time.monotonic()
                if time.monotonic() > self._stop_requested_at + HARD_STOP_GRACE_S:
                    self._hard_stop()

    def _beat(self) -> None:
        try:
            with session_scope(self.settings) as session:
                reply = lifecycle.heartbeat(session, self.job_id, self.attempt,
                                            progress=self.progress, draws_done=self.draws_done)
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not kill the job
            log.warning("job %s: heartbeat failed (%s: %s); retrying", self.job_id, type(exc).__name__, exc)
            return
        if not reply.still_ours and self.stop_reason is None:
            log.warning("job %s: attempt %d is no longer the running attempt; stopping", self.job_id, self.attempt)
            self.stop_reason = "lost"
        elif reply.cancel_requested and self.stop_reason is None:
            log.info("job %s: cancellation requested", self.job_id)
            self.stop_reason = "cancelled"

    def _hard_stop(self) -> None:
        # The sampler did not return within the grace period after a stop request (one enormous step,
        # or stuck in native code): record the outcome, then end this process. The dispatcher or
        # Celery starts a fresh process for the next job.
        reason = self.stop_reason
        log.error("job %s: asked to stop (%s) %.0f s ago and the sampler did not stop; exiting",
                  self.job_id, reason, HARD_STOP_GRACE_S)
        try:
            if reason in ("time_limit", "cancelled"):
                status, error = (FAILED, time_limit_message(self.settings.job_time_limit, self.draws_done)) \
                    if reason == "time_limit" else (CANCELLED, cancelled_message(self.draws_done, forced=True))
                with session_scope(self.settings) as session:
                    lifecycle.finish_unsuccessfully(session, self.job_id, self.attempt, status=status, error=error)
            # "lost" / "parent_gone": whoever took the job over decides what happens to it.
        finally:
            os._exit(3)


def time_limit_message(limit: float, draws_done: int) -> str:
    return (f"time limit of {limit:.0f} s exceeded after {draws_done} draws per chain; ask for fewer "
            "draws/chains or raise LAMBDAHAT_JOB_TIME_LIMIT")


def cancelled_message(draws_done: int, *, forced: bool = False) -> str:
    message = f"cancelled by request after {draws_done} draws per chain"
    if forced:
        message += f"; the sampler did not stop within {HARD_STOP_GRACE_S:.0f} s, so its process was ended"
    return message


class JobThreads:
    """torch's thread count for one job: the rule's count at the start, checked again every
    ``THREADS_CHECK_INTERVAL_S`` and changed when the rule's answer changes (another process starts
    or stops using cores). Called from the job's main thread only: torch's thread count is the
    calling thread's OpenMP setting."""

    def __init__(self, rule: ThreadRule) -> None:
        import torch

        self._torch = torch
        self.rule = rule
        self.initial, self.initial_reason = rule.threads()
        self.count = self.initial
        torch.set_num_threads(self.count)
        self.changes: list[dict[str, Any]] = []
        self._next_check = time.monotonic() + THREADS_CHECK_INTERVAL_S

    def check(self, steps_done: int) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + THREADS_CHECK_INTERVAL_S
        count, reason = self.rule.threads()
        if count != self.count:
            log.info("job threads %d -> %d at step %d (%s)", self.count, count, steps_done, reason)
            self._torch.set_num_threads(count)
            self.count = count
            self.changes.append({"step": steps_done, "threads": count, "reason": reason})

    def summary(self) -> dict[str, Any]:
        """For the result's timings: the count the job started with, why, and any later changes."""
        summary: dict[str, Any] = {"threads": self.initial, "threads_reason": self.initial_reason}
        if self.changes:
            summary["threads_changes"] = self.changes
        return summary


@job_logging  # every record logged while the job runs carries job_id and worker
def run_job(
    job_id: str,
    *,
    settings: Settings | None = None,
    worker_name: str | None = None,
    device: str | None = None,
    exit_with_parent: bool = False,
    fair: bool = False,
    threads: ThreadRule | None = None,
) -> JobOutcome:
    """Claim and run one job to a final state. Never raises for job errors (they are recorded).

    ``fair``: ``job_id`` is only a hint; claim whichever queued job is fairest to run next
    (``lifecycle.claim_next_fair``), which is how Celery workers take work: a broker message is a
    "run the next fair job" token.
    ``threads``: size torch's threads by this rule while the job runs (job processes pass theirs);
    None leaves the thread count alone (a job run inside another program, as in the tests).
    """
    global _jobs_claimed_in_process
    settings = settings or get_settings()
    worker_name = worker_name or os.environ.get("LAMBDAHAT_WORKER_NAME") or f"worker-{os.getpid()}"
    device = device or os.environ.get("LAMBDAHAT_WORKER_DEVICE") or None

    # Retried when the connection drops: a rolled-back claim is simply made again; a claim whose
    # commit landed but whose reply was lost finds the job running, and the reaper re-queues it.
    hint = job_id
    job_id, attempt, state = in_transaction(settings, f"job {hint}: claiming",
                                            lambda session: _claim(session, hint, worker_name, fair))
    if attempt is None:
        log.info("job %s not claimable (%s); nothing to do", job_id, state)
        return JobOutcome(job_id, "skipped", state)
    if job_id != hint:
        log.info("token for job %s runs job %s, the fairest queued job", hint, job_id)
        bind_context(job_id=job_id)
    _jobs_claimed_in_process += 1
    job_process = {"pid": os.getpid(), "job_number": _jobs_claimed_in_process}
    log.info("job %s: attempt %d claimed by %s (job %d of process %d)", job_id, attempt, worker_name,
             job_process["job_number"], job_process["pid"])

    monitor = JobMonitor(settings, job_id, attempt, exit_with_parent=exit_with_parent)
    monitor.start()
    try:
        result = _estimate(settings, job_id, attempt, monitor, device, threads)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded, readable job error
        monitor.finish()
        message = str(exc) if isinstance(exc, StepError) else f"{type(exc).__name__}: {exc}"
        # Users see the error; where artifacts live on the workers is not theirs to see.
        message = message.replace(str(settings.artifact_dir), "<artifacts>")
        message = message.replace(str(settings.artifact_cache_dir), "<artifacts>")
        log.error("job %s failed: %s\n%s", job_id, message, traceback.format_exc())
        return _finish_unsuccessfully(settings, job_id, attempt, FAILED, message)
    monitor.finish()

    if getattr(result, "stopped", False) or monitor.stop_reason is not None:
        return _finish_stopped(settings, job_id, attempt, monitor)
    return _store_result(settings, job_id, attempt, result, monitor, job_process)


def _claim(session: Any, job_id: str, worker_name: str, fair: bool) -> tuple[str, int | None, str]:
    """Claim ``job_id`` (or, with ``fair``, the fairest queued job): (job id, attempt or None, why not)."""
    if fair:
        claimed = lifecycle.claim_next_fair(session, worker_name)
        if claimed is None:
            return job_id, None, "nothing queued"
        claimed_id, attempt = claimed
    else:
        claimed_id, attempt = job_id, lifecycle.claim(session, job_id, worker_name)
    if attempt is None:
        job = session.get(Job, claimed_id)
        return claimed_id, None, job.status if job is not None else "missing"
    lifecycle.clear_partial_results(session, claimed_id)
    return claimed_id, attempt, ""


def _store_result(settings: Settings, job_id: str, attempt: int, result: Any, monitor: JobMonitor,
                  job_process: dict[str, int]) -> JobOutcome:
    """Write the result, chains and traces, fenced by the attempt; a re-assigned job keeps nothing."""
    rows = result_rows(result)
    # How the job ran, beside the estimator's own timings: which process (its how-manieth job) and threads.
    timings = rows["summary"].setdefault("timings", {})
    timings["job_process"] = job_process
    if monitor.threads is not None:
        timings.update(monitor.threads.summary())
    written = in_transaction(settings, f"job {job_id}: storing the result",
                             lambda session: lifecycle.finish_succeeded(session, job_id, attempt, **rows)
                             or _already_finished(session, job_id, attempt, lifecycle.SUCCEEDED))
    if not written:
        log.warning("job %s: attempt %d finished but the job was re-assigned meanwhile; result dropped",
                    job_id, attempt)
        return JobOutcome(job_id, "lost")
    log.info("job %s succeeded: llc %.4g ± %.4g", job_id, result.llc_mean, result.llc_std)
    return JobOutcome(job_id, "succeeded")


def _estimate(settings: Settings, job_id: str, attempt: int, monitor: JobMonitor, device: str | None,
              threads: ThreadRule | None) -> Any:
    def read_inputs(session: Any) -> tuple[Any, Any, dict[str, Any], str]:
        job = session.get(Job, job_id)
        return session.get(Checkpoint, job.checkpoint_id), session.get(Dataset, job.dataset_id), dict(job.config or {}), job.loss

    # A read, so safe to retry when the connection drops (as the final writes are).
    checkpoint, dataset, config, loss = in_transaction(settings, f"job {job_id}: reading its inputs", read_inputs)
    if checkpoint is None or dataset is None:
        raise StepError("loading", LookupError("the job's checkpoint or dataset was deleted"))

    try:
        import torch  # noqa: F401 - first use of torch in this process: after any fork

        from backend.storage import ArtifactStore
        from estimator import LLCConfig, estimate_llc
        from worker.loading import load_dataset, load_model
    except Exception as exc:  # noqa: BLE001
        raise StepError("starting the job process", exc) from exc
    if threads is not None:
        monitor.threads = JobThreads(threads)

    if device and config.get("device", "auto") == "auto":
        config["device"] = device
    try:
        llc_config = LLCConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise StepError("checking the config", exc) from exc
    resolved = _json_safe(llc_config.to_dict())
    in_transaction(settings, f"job {job_id}: storing the resolved config",
                   lambda session: lifecycle.set_resolved_config(session, job_id, attempt, resolved))

    store = ArtifactStore(settings)
    local_paths = {}
    for kind, storage_key in (("checkpoint", checkpoint.storage_key), ("dataset", dataset.storage_key)):
        try:
            local_paths[kind] = store.fetch(storage_key)  # remote stores: downloaded to this worker's cache
        except FileNotFoundError:
            raise StepError(f"loading the {kind}", FileNotFoundError(
                f"the stored {kind} file is missing on this worker; every worker must see the API's "
                "artifacts (LAMBDAHAT_ARTIFACT_DIR on a shared volume or an object store URL)")) from None
        except Exception as exc:  # noqa: BLE001 - e.g. the object store is unreachable
            raise StepError(f"fetching the {kind}", exc) from exc
    checkpoint_path, dataset_path = local_paths["checkpoint"], local_paths["dataset"]
    try:
        model = load_model(checkpoint_path, checkpoint.format, checkpoint.architecture)
    except Exception as exc:  # noqa: BLE001
        raise StepError("loading the checkpoint", exc) from exc
    try:
        data = load_dataset(dataset_path, dataset.format, dataset.kind)  # (x, y), or a dict of token tensors
    except Exception as exc:  # noqa: BLE001
        raise StepError("loading the dataset", exc) from exc
    try:
        return estimate_llc(model, data, loss=loss, config=llc_config, progress=monitor.on_progress)
    except Exception as exc:  # noqa: BLE001
        raise StepError("estimating the LLC", exc) from exc


def _finish_stopped(settings: Settings, job_id: str, attempt: int, monitor: JobMonitor) -> JobOutcome:
    reason = monitor.stop_reason
    if reason == "cancelled":
        return _finish_unsuccessfully(settings, job_id, attempt, CANCELLED, cancelled_message(monitor.draws_done))
    if reason == "time_limit":
        return _finish_unsuccessfully(settings, job_id, attempt, FAILED,
                                      time_limit_message(settings.job_time_limit, monitor.draws_done))
    if reason is None:
        return _finish_unsuccessfully(settings, job_id, attempt, FAILED,
                                      f"the sampler stopped early after {monitor.draws_done} draws per chain")
    # "lost" (re-assigned by the reaper) or "parent_gone": whoever took over decides what happens next.
    return JobOutcome(job_id, "lost", reason)


def _finish_unsuccessfully(settings: Settings, job_id: str, attempt: int, status: str, error: str) -> JobOutcome:
    written = in_transaction(settings, f"job {job_id}: recording {status}",
                             lambda session: lifecycle.finish_unsuccessfully(session, job_id, attempt,
                                                                            status=status, error=error)
                             or _already_finished(session, job_id, attempt, status))
    return JobOutcome(job_id, status if written else "lost", error)


def _already_finished(session: Any, job_id: str, attempt: int, status: str) -> bool:
    """True if this attempt's final write already committed (a retry after the commit's reply was lost)."""
    job = session.get(Job, job_id)
    return job is not None and job.status == status and job.attempts == attempt


# -- turning an LLCResult into rows ---------------------------------------------------------------

SUMMARY_FIELDS = ("llc_mean", "llc_std", "llc_per_chain", "init_loss", "nbeta", "n", "diagnostics", "warnings",
                  "timings", "chain_mode", "chain_mode_reason")


def _json_safe(value: Any) -> Any:
    """Plain JSON values; non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def result_rows(result: Any) -> dict[str, Any]:
    """The keyword arguments of ``lifecycle.finish_succeeded`` for an ``LLCResult``."""
    full = result.to_dict(include_traces=False)  # the traces are stored as chunks, not JSON
    summary = _json_safe({k: full[k] for k in SUMMARY_FIELDS if k in full})
    loss_trace = np.asarray(result.loss_trace, dtype=np.float64)
    llc_trace = np.asarray(result.llc_trace, dtype=np.float64)
    num_chains, num_draws = loss_trace.shape

    diverged, messages = _diverged_chains(full, num_chains)
    per_chain = list(full.get("llc_per_chain") or [None] * num_chains)
    chains = []
    for c in range(num_chains):
        finite = loss_trace[c][np.isfinite(loss_trace[c])]
        llc = per_chain[c] if c < len(per_chain) else None
        chains.append(dict(
            chain=c,
            llc=float(llc) if llc is not None and np.isfinite(llc) else None,
            loss_mean=float(finite.mean()) if finite.size else None,
            num_draws=int(num_draws),
            diverged=c in diverged,
            message=messages.get(c),
        ))
    chunks = [
        dict(chain=c, series=series, start_draw=start, num_draws=min(TRACE_CHUNK_DRAWS, num_draws - start),
             data=encode_chunk(trace[c, start:start + TRACE_CHUNK_DRAWS]))
        for series, trace in (("loss", loss_trace), ("llc", llc_trace))
        for c in range(num_chains)
        for start in range(0, num_draws, TRACE_CHUNK_DRAWS)
    ]
    resolved = full.get("config")
    return dict(summary=summary, resolved_config=_json_safe(resolved) if resolved is not None else None,
                chains=chains, chunks=chunks, draws_done=int(num_draws))


def encode_chunk(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def _diverged_chains(full: dict[str, Any], num_chains: int) -> tuple[set[int], dict[int, str]]:
    """Which chains diverged (the diagnostics' list), and each chain's warning messages joined."""
    diverged = set((full.get("diagnostics") or {}).get("diverged_chains") or [])
    messages: dict[int, str] = {}
    for warning in full.get("warnings") or []:
        chain = warning.get("chain")
        if isinstance(chain, int) and 0 <= chain < num_chains:
            messages[chain] = f"{messages[chain]}; {warning['message']}" if chain in messages else warning["message"]
    return diverged, messages
