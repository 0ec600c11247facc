"""Delivering "run job X" to whoever runs jobs: the embedded dispatcher, or Celery workers via Redis.

Called only AFTER the job row is committed, so a worker never looks for a row it cannot see yet.
A failed delivery is logged, not raised: the job is already safely queued in the database (the
source of truth), and the reaper re-enqueues queued jobs that nobody claimed.
Torch-free; Celery is imported only in distributed mode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from backend.settings import Settings

log = logging.getLogger(__name__)


def enqueue(settings: Settings, job_ids: str | Iterable[str]) -> None:
    ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
    if not ids:
        return
    if settings.embedded:
        from backend.dispatcher import wake_dispatchers

        wake_dispatchers(settings)
        return
    from backend.celery_app import send_run_job

    for job_id in ids:
        try:
            send_run_job(settings, job_id)
        except Exception as exc:  # noqa: BLE001 - the DB row is the record; the reaper retries
            log.warning("could not enqueue job %s on %s (%s: %s); the reaper will re-enqueue it",
                        job_id, _redact(settings.broker_url), type(exc).__name__, exc)


def _redact(url: str | None) -> str:
    if not url or "@" not in url:
        return str(url)
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
