"""The Celery task: a "run the next fair job" token for the shared runner (the job id it carries is
the job whose submission sent it, a hint: the worker claims whichever queued job is fairest to run).

Imported by the worker's parent process before it forks its pool: nothing here touches torch or
CUDA (the runner imports torch inside the job), and each pool process drops database connections
inherited from its parent.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_process_init

log = logging.getLogger("lambdahat.tasks")


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A pooled connection opened by the parent (the reaper thread) must not be shared with a child:
    # dispose(close=False) forgets the inherited connections without closing the parent's sockets.
    from api.db import get_engine

    get_engine().dispose(close=False)


@shared_task(name="lambdahat.run_job", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job_task(job_id: str) -> str:
    from worker.runner import run_job

    if not isinstance(job_id, str) or not job_id.isalnum() or len(job_id) > 64:
        log.error("ignoring a malformed job id %r", job_id)
        return "malformed"
    # The message is a "run the next fair job" token; job_id is a hint (see lifecycle.claim_next_fair).
    outcome = run_job(job_id, fair=True)
    return outcome.status
