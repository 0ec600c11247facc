"""The embedded dispatcher: runs jobs on this machine without Redis or Celery (``lambdahat serve``).

A thread in the API process. Each job runs in its own ``python -m worker.run_job JOB_ID`` subprocess
(torch never enters the API process, and a crashing job cannot take the API down), at most
``embedded_max_concurrent_jobs`` at a time, in fair order (``lifecycle.fair_queued_job_ids``:
round-robin across owners, oldest job first within an owner). The thread wakes when a job is
submitted (``wake_dispatchers``) or a job process ends, and polls otherwise.

- On start, jobs left ``running`` by a previous server are re-queued (or failed, if they used up
  their attempts): that server and its job processes are gone.
- A job process that exits while its job is still ``running`` died mid-job: the job is re-queued or
  failed by attempts, exactly as the reaper does for Celery workers.
- On stop, running job processes are terminated and their jobs re-queued without using an attempt.
- Each job process writes its log to ``<data_dir>/logs/jobs/<job_id>.log``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from api.db import session_scope
from api.jobs import lifecycle
from api.models import Job
from api.settings import Settings

log = logging.getLogger("lambdahat.dispatcher")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POLL_INTERVAL_S = 1.0
HARD_KILL_MARGIN_S = 90.0  # beyond job_time_limit (+ the runner's own grace) before the dispatcher kills

_active: weakref.WeakSet[EmbeddedDispatcher] = weakref.WeakSet()


def wake_dispatchers(settings: Settings) -> None:
    """A job was committed: wake the dispatcher(s) of this database so it starts without waiting for a poll."""
    for dispatcher in list(_active):
        if dispatcher.settings.database_url == settings.database_url:
            dispatcher.wake()


@dataclass
class _Child:
    job_id: str
    process: subprocess.Popen
    log_file: IO[bytes]
    started: float


def job_process_env(settings: Settings) -> dict[str, str]:
    """The job process sees the same deployment as this server: every setting, as LAMBDAHAT_* variables."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        key = f"LAMBDAHAT_{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    concurrency = max(1, settings.embedded_max_concurrent_jobs)
    if concurrency > 1 and "OMP_NUM_THREADS" not in env:
        # Several jobs at once share the cores instead of each assuming it has them all.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // concurrency))
    return env


class EmbeddedDispatcher:
    def __init__(self, settings: Settings, *, worker_name: str = "embedded", poll_interval: float = POLL_INTERVAL_S,
                 device: str | None = None) -> None:
        self.settings = settings
        self.worker_name = worker_name
        self.poll_interval = poll_interval
        self.device = device or os.environ.get("LAMBDAHAT_WORKER_DEVICE") or None
        self.max_concurrent = max(1, settings.embedded_max_concurrent_jobs)
        self.log_dir = Path(settings.data_dir) / "logs" / "jobs"
        self._children: dict[str, _Child] = {}
        self._start_failures: dict[str, int] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.requeue_orphans()
        _active.add(self)
        self._thread = threading.Thread(target=self._loop, name="lambdahat-dispatcher", daemon=True)
        self._thread.start()
        log.info("embedded dispatcher started (up to %d job(s) at a time)", self.max_concurrent)

    def stop(self, timeout: float = 10.0) -> None:
        _active.discard(self)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        for child in list(self._children.values()):
            self._terminate(child, timeout=5.0)
            self._after_exit(child, graceful_stop=True)
        self._children.clear()

    def wake(self) -> None:
        self._wake.set()

    @property
    def running_job_ids(self) -> list[str]:
        return list(self._children)

    def requeue_orphans(self) -> list[lifecycle.Released]:
        """Jobs left running by a previous server: their processes are gone (or will stop on their own)."""
        released = []
        with session_scope(self.settings) as session:
            for job in lifecycle.running_jobs(session):
                outcome = lifecycle.release_lost_attempt(
                    session, job, max_attempts=self.settings.max_attempts,
                    why="the server stopped while it was running")
                if outcome is not None:
                    released.append(outcome)
        if released:
            log.warning("found %d job(s) left running by a previous server: %s", len(released),
                        ", ".join(f"{r.job_id} -> {r.outcome}" for r in released))
        return released

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._collect_exited()
                self._enforce_time_limit()
                self._launch_queued()
            except Exception:  # noqa: BLE001 - keep dispatching through a database hiccup
                log.exception("dispatcher pass failed; retrying")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _launch_queued(self) -> None:
        free = self.max_concurrent - len(self._children)
        if free <= 0 or self._stopping.is_set():
            return
        with session_scope(self.settings) as session:
            job_ids = lifecycle.fair_queued_job_ids(session, limit=free, exclude=list(self._children))
        for job_id in job_ids:
            self._children[job_id] = self._spawn(job_id)

    def _spawn(self, job_id: str) -> _Child:
        log_file = open(self.log_dir / f"{job_id}.log", "ab")  # noqa: SIM115 - closed when the child exits
        command = [sys.executable, "-m", "worker.run_job", job_id, "--worker", self.worker_name, "--exit-with-parent"]
        if self.device:
            command += ["--device", self.device]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=job_process_env(self.settings), cwd=str(PROJECT_ROOT),
            start_new_session=True,  # Ctrl-C on the server reaches the server; it stops its jobs itself
        )
        log.info("job %s: started process %d", job_id, process.pid, extra={"job_id": job_id})
        # Wake the loop the moment the process ends, to record the outcome and start the next job.
        threading.Thread(target=self._wake_on_exit, args=(process,), name=f"job-{job_id[:8]}-exit",
                         daemon=True).start()
        return _Child(job_id, process, log_file, time.monotonic())

    def _wake_on_exit(self, process: subprocess.Popen) -> None:
        process.wait()
        self._wake.set()

    def _collect_exited(self) -> None:
        for job_id, child in list(self._children.items()):
            if child.process.poll() is None:
                continue
            del self._children[job_id]
            self._after_exit(child)

    def _enforce_time_limit(self) -> None:
        limit = self.settings.job_time_limit + HARD_KILL_MARGIN_S
        for child in list(self._children.values()):
            if time.monotonic() - child.started > limit and child.process.poll() is None:
                log.error("job %s: process %d exceeded the time limit and did not stop; killing it",
                          child.job_id, child.process.pid, extra={"job_id": child.job_id})
                self._terminate(child, timeout=2.0)
                with session_scope(self.settings) as session:
                    job = session.get(Job, child.job_id)
                    if job is not None and job.status == lifecycle.RUNNING:
                        lifecycle.finish_unsuccessfully(
                            session, job.id, job.attempts, status=lifecycle.FAILED,
                            error=f"time limit of {self.settings.job_time_limit:.0f} s exceeded; the job process "
                                  "did not stop and was killed")

    def _after_exit(self, child: _Child, *, graceful_stop: bool = False) -> None:
        child.log_file.close()
        code = child.process.returncode
        with session_scope(self.settings) as session:
            job = session.get(Job, child.job_id)
            if job is None:
                return
            if job.status == lifecycle.RUNNING and job.worker == self.worker_name:
                why = ("the server was shut down" if graceful_stop
                       else f"its job process exited with {_describe_exit(code)}")
                released = lifecycle.release_lost_attempt(
                    session, job, max_attempts=self.settings.max_attempts, why=why, refund_attempt=graceful_stop)
                if released is not None:
                    log.warning("job %s: %s -> %s", job.id, why, released.outcome, extra={"job_id": job.id})
            elif job.status == lifecycle.QUEUED and not graceful_stop:
                # The process ended without claiming the job: it could not start (bad environment?).
                failures = self._start_failures.get(job.id, 0) + 1
                self._start_failures[job.id] = failures
                if failures >= self.settings.max_attempts:
                    tail = _log_tail(self.log_dir / f"{job.id}.log")
                    lifecycle.fail_unstarted(
                        session, job.id,
                        f"the job process could not start ({_describe_exit(code)}, {failures} times): {tail}")

    @staticmethod
    def _terminate(child: _Child, timeout: float) -> None:
        if child.process.poll() is not None:
            return
        child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait(timeout=timeout)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _log_tail(path: Path, max_chars: int = 500) -> str:
    try:
        text = path.read_bytes()[-4000:].decode("utf-8", "replace").strip()
    except OSError:
        return "(no log)"
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "(empty log)")[-max_chars:]
