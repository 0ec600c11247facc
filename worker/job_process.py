"""``python -m worker.job_process``: a warm job process of the embedded dispatcher.

The process starts once, imports torch and runs one tiny estimate (which loads what tracing and
``vmap`` load on first use), then runs the jobs the dispatcher hands it, one at a time, for as long
as it lives. The next checkpoint of a batch pays neither the import nor that first use (seconds
each, against a fraction of a second for a small model's estimate), and reuses the traced gradient
graph of a model of the same architecture, with the weights as inputs (the graph cache in ``estimator/functional.py`` checks a reused graph bit for
bit before trusting it).

Jobs stay isolated where it matters. Each job is claimed, fenced, heartbeated, cancelled and timed
out by ``worker.runner`` exactly as in a fresh process. If the process dies, the dispatcher re-queues
the job it was running and starts another process for the rest. After every job the process frees
what it can and reports its resident memory; the dispatcher replaces it when that exceeds
``LAMBDAHAT_JOB_PROCESS_MAX_RSS_BYTES``, so a job that leaks memory does not burden the next one. A
job that hangs is ended by its time limit together with its process.

Protocol, one JSON object per line:

- standard input, from the dispatcher: ``{"job_id": "..."}``; end of input: exit;
- the reply pipe (``--reply-fd``): ``{"event": "ready", "pid": ..., "warmup_s": ...}`` once warm, then
  ``{"event": "finished", "job_id": ..., "status": ..., "rss_bytes": ...}`` after each job.

While a job runs, everything the process writes (log records, warnings, native libraries' output)
goes to ``<data dir>/logs/jobs/<job id>.log``; between jobs, to the file the dispatcher gave it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backend.logs import configure_logging
from backend.settings import get_settings
from worker.cores import ThreadRule
from worker.runner import run_job
from worker.warm import release_memory, warm_up

log = logging.getLogger("lambdahat.job_process")


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's standard output and error (file descriptors 1 and 2) to ``path`` for a while."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (target, *saved):
            os.close(fd)


def valid_job_id(value: Any) -> bool:
    return isinstance(value, str) and value.isalnum() and 0 < len(value) <= 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.job_process", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="embedded", help="recorded as the worker of the jobs it runs")
    parser.add_argument("--device", default=None, help="device for configs that ask for 'auto'")
    parser.add_argument("--reply-fd", type=int, required=True, help="file descriptor of the reply pipe")
    args = parser.parse_args(argv)
    configure_logging(worker=args.worker)  # LAMBDAHAT_LOG_FORMAT: text or one JSON object per line
    settings = get_settings()
    job_logs = Path(settings.data_dir) / "logs" / "jobs"
    job_logs.mkdir(parents=True, exist_ok=True)
    replies = os.fdopen(args.reply_fd, "w", buffering=1)

    def reply(**message: Any) -> bool:
        """False once the dispatcher is gone (its end of the pipe closed)."""
        try:
            replies.write(json.dumps(message) + "\n")
            return True
        except OSError:
            return False

    # The rule's meter first: the warm-up is its first measuring window.
    threads = ThreadRule.for_process(job_slots=settings.embedded_max_concurrent_jobs,
                                     fixed=settings.job_threads or None)
    warmup_s = warm_up()
    log.info("job process %d warm after %.2f s; waiting for jobs", os.getpid(), warmup_s)
    reply(event="ready", pid=os.getpid(), warmup_s=round(warmup_s, 3))
    while line := sys.stdin.readline():
        try:
            job_id = json.loads(line).get("job_id")
        except (ValueError, AttributeError):
            job_id = None
        if not valid_job_id(job_id):
            log.error("ignoring a malformed request %r", line[:200])
            continue
        with output_to(job_logs / f"{job_id}.log"):
            outcome = run_job(job_id, worker_name=args.worker, device=args.device, exit_with_parent=True,
                              threads=threads)
            log.info("job %s: %s %s", outcome.job_id, outcome.status, outcome.detail, extra={"job_id": job_id})
        if not reply(event="finished", job_id=job_id, status=outcome.status, rss_bytes=release_memory()):
            break
    log.info("job process %d: no more jobs; exiting", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
