"""The Celery task: a "run the next fair job" token for the shared runner (the job id it carries is
the job whose submission sent it, a hint: the worker claims whichever queued job is fairest to run).

Imported by the worker's parent process before it forks its pool: nothing here touches torch or
CUDA at import. Each pool process, once forked, drops the database connections inherited from its
parent and warms up (torch imported, tracing loaded: ``worker.warm``), so that its first job starts
as fast as its later ones; it then runs job after job (the traced gradient graph of an architecture
is reused across its checkpoints) until Celery replaces it (``worker_max_memory_per_child``).
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_process_init

from worker.cores import ThreadRule

log = logging.getLogger("lambdahat.tasks")

_threads: ThreadRule | None = None  # this pool process's thread rule, made once it is forked


@worker_process_init.connect
def _prepare_pool_process(**_: object) -> None:
    global _threads
    from backend.db import get_engine
    from backend.settings import get_settings
    from worker.warm import warm_up

    # A pooled connection opened by the parent (the reaper thread) must not be shared with a child:
    # dispose(close=False) forgets the inherited connections without closing the parent's sockets.
    get_engine().dispose(close=False)
    _threads = ThreadRule.for_process(job_slots=1, fixed=get_settings().job_threads or None)
    seconds = warm_up()  # CPU only: CUDA is first touched by a job, in this process, after the fork
    log.info("pool process warm after %.2f s", seconds)


@shared_task(name="lambdahat.run_job", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job_task(job_id: str) -> str:
    from worker.runner import run_job

    if not isinstance(job_id, str) or not job_id.isalnum() or len(job_id) > 64:
        log.error("ignoring a malformed job id %r", job_id)
        return "malformed"
    from worker.warm import release_memory

    # The message is a "run the next fair job" token; job_id is a hint (see lifecycle.claim_next_fair).
    outcome = run_job(job_id, fair=True, threads=_threads)
    release_memory()
    return outcome.status
