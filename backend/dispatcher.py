"""The embedded dispatcher: runs jobs on this machine without Redis or Celery (``lambdahat serve``).

A thread in the API process. Jobs run in warm job processes (``python -m worker.job_process``), at
most ``embedded_max_concurrent_jobs`` at a time, in fair order (``lifecycle.fair_queued_job_ids``:
round-robin across owners, oldest job first within an owner). torch never enters the API process,
and a crashing job cannot take the API down. One process per job slot starts with the dispatcher,
warms up once (torch imported, tracing loaded) and then takes one job after another, so the
checkpoints of a batch pay neither a process start nor imports (docs/jobs.md, "Warm job processes").
The thread wakes when a job is submitted (``wake_dispatchers``), when a process reports a finished
job or exits, and polls otherwise.

- On start, jobs left ``running`` by a previous server are re-queued (or failed, if they used up
  their attempts): that server and its job processes are gone.
- A job process that exits while its job is still ``running`` died mid-job: the job is re-queued or
  failed by attempts, exactly as the reaper does for Celery workers, and a fresh process takes the
  slot. The other jobs were never handed to it: they wait in the database.
- A job process whose resident memory after a job exceeds ``job_process_max_rss_bytes`` is replaced
  before the next job.
- On stop, running job processes are terminated and their jobs re-queued without using an attempt.
- Each job writes its log to ``<data_dir>/logs/jobs/<job_id>.log``; each slot's processes write
  their own lines (start, warm-up, exit) to ``<data_dir>/logs/job-process-<slot>.log``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any

from backend import lifecycle
from backend.db import session_scope
from backend.models import Job
from backend.settings import Settings

log = logging.getLogger("lambdahat.dispatcher")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POLL_INTERVAL_S = 1.0
HARD_KILL_MARGIN_S = 90.0  # beyond job_time_limit (+ the runner's own grace) before the dispatcher kills
RESTART_BACKOFF_MAX_S = 60.0  # a process that keeps dying before it is warm is restarted at most this rarely

_active: weakref.WeakSet[EmbeddedDispatcher] = weakref.WeakSet()


def wake_dispatchers(settings: Settings) -> None:
    """A job was committed: wake the dispatcher(s) of this database so it starts without waiting for a poll."""
    for dispatcher in list(_active):
        if dispatcher.settings.database_url == settings.database_url:
            dispatcher.wake()


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
    return env


class JobProcess:
    """One warm job process, and the job it was handed (None while idle)."""

    def __init__(self, slot: int, process: subprocess.Popen, log_file: IO[bytes]) -> None:
        self.slot = slot
        self.process = process
        self.log_file = log_file
        self.job_id: str | None = None
        self.job_started = 0.0  # monotonic time the job was handed over
        self.ready = False  # warmed up
        self.retiring = False  # finishes no more jobs: its input is closed
        self.jobs_done = 0
        self.reader: threading.Thread | None = None

    def hand(self, job_id: str) -> bool:
        """Give the process a job; False if it can no longer take one (it just died)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps({"job_id": job_id}) + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        self.job_id, self.job_started = job_id, time.monotonic()
        return True

    def retire(self) -> None:
        """No more jobs: the process exits when it reads the end of its input."""
        self.retiring = True
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
        except OSError:
            pass

    def terminate(self, timeout: float) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)


class EmbeddedDispatcher:
    def __init__(self, settings: Settings, *, worker_name: str = "embedded", poll_interval: float = POLL_INTERVAL_S,
                 device: str | None = None) -> None:
        self.settings = settings
        self.worker_name = worker_name
        self.poll_interval = poll_interval
        self.device = device or os.environ.get("LAMBDAHAT_WORKER_DEVICE") or None
        self.max_concurrent = max(1, settings.embedded_max_concurrent_jobs)
        self.log_dir = Path(settings.data_dir) / "logs"
        self._processes: dict[int, JobProcess] = {}  # slot -> its current process
        self._restart_at: dict[int, float] = {}  # slot -> not before this monotonic time
        self._early_deaths: dict[int, int] = {}  # slot -> processes in a row that died before they were warm
        self._start_failures: dict[str, int] = {}
        self._events: queue.Queue[tuple[JobProcess, dict[str, Any]]] = queue.Queue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        (self.log_dir / "jobs").mkdir(parents=True, exist_ok=True)
        self.requeue_orphans()
        _active.add(self)
        for slot in range(self.max_concurrent):
            self._processes[slot] = self._spawn(slot)  # warm before the first job arrives
        self._thread = threading.Thread(target=self._loop, name="lambdahat-dispatcher", daemon=True)
        self._thread.start()
        log.info("embedded dispatcher started (up to %d job(s) at a time, in warm job processes)", self.max_concurrent)

    def stop(self, timeout: float = 10.0) -> None:
        _active.discard(self)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        for proc in list(self._processes.values()):
            if proc.job_id is None:
                proc.retire()
            proc.terminate(timeout=5.0)
            if proc.job_id is not None:
                self._after_exit(proc, graceful_stop=True)
            proc.log_file.close()
        self._processes.clear()

    def wake(self) -> None:
        self._wake.set()

    # Read from request threads while the dispatcher thread changes ``_processes``: each reader takes a
    # snapshot first (``list()`` of a dict's values is one step under the GIL).

    @property
    def running_job_ids(self) -> list[str]:
        """Jobs handed to a job process and not finished (the process may still be claiming them)."""
        return [job_id for proc in list(self._processes.values()) if (job_id := proc.job_id) is not None]

    def job_processes(self) -> list[dict[str, Any]]:
        """One entry per slot's current process, for ``/v1/status``."""
        return [{"slot": proc.slot, "pid": proc.process.pid, "warm": proc.ready, "busy": proc.job_id is not None,
                 "jobs_done": proc.jobs_done} for proc in sorted(list(self._processes.values()), key=lambda p: p.slot)]

    def job_process_pid(self, job_id: str) -> int | None:
        """The pid of the process running ``job_id``, if one is."""
        return next((proc.process.pid for proc in list(self._processes.values()) if proc.job_id == job_id), None)

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
                self._collect_events()
                self._collect_exited()
                self._enforce_time_limit()
                self._launch_queued()
            except Exception:  # noqa: BLE001 - keep dispatching through a database hiccup
                log.exception("dispatcher pass failed; retrying")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _launch_queued(self) -> None:
        if self._stopping.is_set():
            return
        now = time.monotonic()
        for slot in range(self.max_concurrent):
            if slot not in self._processes and now >= self._restart_at.get(slot, 0.0):
                self._processes[slot] = self._spawn(slot)
        idle = [proc for proc in self._processes.values()
                if proc.job_id is None and not proc.retiring and proc.process.poll() is None]
        if not idle:
            return
        with session_scope(self.settings) as session:
            job_ids = lifecycle.fair_queued_job_ids(session, limit=len(idle), exclude=self.running_job_ids)
        for proc, job_id in zip(idle, job_ids, strict=False):
            if proc.hand(job_id):
                log.info("job %s: handed to job process %d", job_id, proc.process.pid, extra={"job_id": job_id})

    def _spawn(self, slot: int) -> JobProcess:
        log_file = open(self.log_dir / f"job-process-{slot}.log", "ab")  # noqa: SIM115 - closed when the process ends
        replies_read, replies_write = os.pipe()
        command = [sys.executable, "-m", "worker.job_process", "--worker", self.worker_name,
                   "--reply-fd", str(replies_write)]
        if self.device:
            command += ["--device", self.device]
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT,
                env=job_process_env(self.settings), cwd=str(PROJECT_ROOT), pass_fds=(replies_write,),
                start_new_session=True,  # Ctrl-C on the server reaches the server; it stops its jobs itself
            )
        except BaseException:
            os.close(replies_read)
            log_file.close()
            raise
        finally:
            os.close(replies_write)
        proc = JobProcess(slot, process, log_file)
        proc.reader = threading.Thread(target=self._read_replies, args=(proc, replies_read),
                                       name=f"job-process-{slot}-replies", daemon=True)
        proc.reader.start()
        log.info("job process %d started in slot %d", process.pid, slot)
        return proc

    def _read_replies(self, proc: JobProcess, fd: int) -> None:
        """Queue the process's replies and wake the loop; at the end of them, wait for the process to exit."""
        with os.fdopen(fd, "rb") as replies:
            for line in replies:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    self._events.put((proc, message))
                    self._wake.set()
        proc.process.wait()
        self._wake.set()

    def _collect_events(self) -> None:
        while True:
            try:
                proc, message = self._events.get_nowait()
            except queue.Empty:
                return
            event = message.get("event")
            if event == "ready":
                proc.ready = True
                self._early_deaths.pop(proc.slot, None)
                log.info("job process %d is warm (%.2f s)", proc.process.pid, message.get("warmup_s", float("nan")))
            elif event == "finished" and message.get("job_id") == proc.job_id:
                proc.job_id = None
                proc.jobs_done += 1
                rss = int(message.get("rss_bytes") or 0)
                limit = self.settings.job_process_max_rss_bytes
                if limit and rss > limit and not proc.retiring:
                    log.info("job process %d holds %.0f MiB after %d job(s), above the %.0f MiB limit; replacing it",
                             proc.process.pid, rss / 2**20, proc.jobs_done, limit / 2**20)
                    proc.retire()

    def _collect_exited(self) -> None:
        for slot, proc in list(self._processes.items()):
            if proc.process.poll() is None:
                continue
            del self._processes[slot]
            if proc.reader is not None:
                proc.reader.join(timeout=2.0)  # its last replies are queued
            self._collect_events()
            if proc.job_id is not None:
                self._after_exit(proc)
            if not proc.ready and not proc.retiring and not self._stopping.is_set():
                deaths = self._early_deaths.get(slot, 0) + 1
                self._early_deaths[slot] = deaths
                delay = min(RESTART_BACKOFF_MAX_S, 0.5 * 2 ** (deaths - 1))
                self._restart_at[slot] = time.monotonic() + delay
                log.error("job process %d died before it was warm (%s); restarting slot %d in %.1f s; see %s",
                          proc.process.pid, _describe_exit(proc.process.returncode), slot, delay,
                          self.log_dir / f"job-process-{slot}.log")
            proc.log_file.close()

    def _enforce_time_limit(self) -> None:
        limit = self.settings.job_time_limit + HARD_KILL_MARGIN_S
        for proc in list(self._processes.values()):
            job_id = proc.job_id
            if job_id is None or time.monotonic() - proc.job_started <= limit or proc.process.poll() is not None:
                continue
            log.error("job %s: process %d exceeded the time limit and did not stop; killing it",
                      job_id, proc.process.pid, extra={"job_id": job_id})
            proc.terminate(timeout=2.0)
            with session_scope(self.settings) as session:
                job = session.get(Job, job_id)
                if job is not None and job.status == lifecycle.RUNNING:
                    lifecycle.finish_unsuccessfully(
                        session, job.id, job.attempts, status=lifecycle.FAILED,
                        error=f"time limit of {self.settings.job_time_limit:.0f} s exceeded; the job process "
                              "did not stop and was killed")

    def _after_exit(self, proc: JobProcess, *, graceful_stop: bool = False) -> None:
        """The process ended while it had a job: settle the job by what the database says of it."""
        code = proc.process.returncode
        job_id = proc.job_id
        proc.job_id = None
        with session_scope(self.settings) as session:
            job = session.get(Job, job_id)
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
                # The process ended before it claimed the job: it could not start (bad environment?).
                failures = self._start_failures.get(job.id, 0) + 1
                self._start_failures[job.id] = failures
                if failures >= self.settings.max_attempts:
                    job_log = self.log_dir / "jobs" / f"{job.id}.log"
                    tail = _log_tail(job_log if _has_text(job_log) else self.log_dir / f"job-process-{proc.slot}.log")
                    lifecycle.fail_unstarted(
                        session, job.id,
                        f"the job process could not start ({_describe_exit(code)}, {failures} times): {tail}")


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _has_text(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _log_tail(path: Path, max_chars: int = 500) -> str:
    try:
        text = path.read_bytes()[-4000:].decode("utf-8", "replace").strip()
    except OSError:
        return "(no log)"
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "(empty log)")[-max_chars:]
