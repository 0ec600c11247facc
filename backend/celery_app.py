"""The one Celery configuration shared by producers (the API, the reaper) and workers.

Celery only delivers "run job X"; the job's state lives in the database. Choices, and why
(see docs/jobs.md and the service notes):

- JSON only: a broker message never carries pickle.
- ``acks_late`` + ``prefetch 1``: a message is acknowledged when the job ends, and a worker holds
  at most one job it has not started.
- ``visibility_timeout`` far above the longest job: with Redis, an unacknowledged message older than
  this is handed to another worker while the first still runs it. The job's atomic claim in the
  database makes such duplicates harmless, but they should not be routine.
- ``reject_on_worker_lost``: if the worker process dies mid-job the message goes back to the queue;
  the redelivery finds the job still ``running`` in the database and does nothing, and the reaper
  re-queues the job once its heartbeat is stale, counting attempts (so a job that kills its worker
  every time is failed after ``max_attempts``, not retried forever).
- The pool process lives across jobs (warm: ``worker.tasks``) until its peak resident memory
  exceeds ``job_process_max_rss_bytes`` (``worker_max_memory_per_child``); Celery then replaces it
  after the job. Its warm-up runs before it takes a job, so the wait for a new process to report
  alive (``worker_proc_alive_timeout``) allows for importing torch on a busy machine.

Torch-free: the API imports this to send tasks by name.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from celery import Celery

from backend.settings import Settings, get_settings

TASK_NAME = "lambdahat.run_job"
DEFAULT_QUEUE = "lambdahat"


def queue_name() -> str:
    """The queue jobs are sent to (``LAMBDAHAT_QUEUE``, default ``lambdahat``)."""
    return os.environ.get("LAMBDAHAT_QUEUE") or DEFAULT_QUEUE


def visibility_timeout(settings: Settings) -> int:
    return int(max(12 * 3600.0, settings.job_time_limit + 3600.0))


def celery_config(settings: Settings) -> dict[str, Any]:
    return dict(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        broker_transport_options={
            "visibility_timeout": visibility_timeout(settings),
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
        },
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_max_memory_per_child=settings.job_process_max_rss_bytes // 1024 or None,  # KiB; 0: no limit
        worker_proc_alive_timeout=180.0,
        task_default_queue=queue_name(),
        task_create_missing_queues=True,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2},
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if not settings.broker_url:
        raise RuntimeError(
            "LAMBDAHAT_BROKER_URL is not set: Celery workers need a broker (e.g. redis://127.0.0.1:6379/0). "
            "Without one, `lambdahat serve` runs jobs itself (embedded mode)."
        )
    app = Celery("lambdahat", include=["worker.tasks"])
    app.conf.update(celery_config(settings))
    return app


@lru_cache(maxsize=8)
def _producer(broker_url: str, job_time_limit: float) -> Celery:
    return make_celery(Settings(broker_url=broker_url, job_time_limit=job_time_limit))


def producer(settings: Settings) -> Celery:
    assert settings.broker_url
    return _producer(settings.broker_url, settings.job_time_limit)


def send_run_job(settings: Settings, job_id: str) -> None:
    """Enqueue by task name: the sender never imports the task code (or torch)."""
    producer(settings).send_task(TASK_NAME, args=[job_id], queue=queue_name(), ignore_result=True)


def __getattr__(name: str) -> Any:
    # `celery -A backend.celery_app worker` looks up `app`; build it from the environment on demand.
    if name in ("app", "celery"):
        return make_celery()
    raise AttributeError(name)
