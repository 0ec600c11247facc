"""The cluster at a glance, read from the database: what ``GET /v1/status`` answers and what
``lambdahat status --from-database`` prints (an operator's view, without the API).

Counts (jobs by status, queue depth) and workers are cluster-wide aggregates with no owner data; the
list of running jobs holds one owner's jobs, or every owner's (``owner=None``, for admins). ``ping``
also asks every Celery worker to answer a broadcast ping.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from backend import cluster
from backend.models import Job, JobStatus
from backend.settings import Settings

log = logging.getLogger("lambdahat.status")

MAX_RUNNING_LISTED = 200


def _iso(value: datetime | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def redact(url: str | None) -> str | None:
    if not url or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def celery_ping(settings: Settings, timeout: float) -> dict[str, str] | str:
    """``{celery hostname: "pong"}`` for every worker that answered, or why nobody could be asked."""
    try:
        from backend.celery_app import producer

        replies = producer(settings).control.ping(timeout=timeout) or []
    except Exception as exc:  # noqa: BLE001
        return f"ping failed: {type(exc).__name__}: {exc}"
    answered: dict[str, str] = {}
    for reply in replies:
        for hostname, body in reply.items():
            answered[hostname] = str((body or {}).get("ok", body))
    return answered


def cluster_status(session: Any, settings: Settings, *, owner: str | None, dispatcher: Any = None,
                   ping: bool = False, ping_timeout: float = 1.0) -> dict[str, Any]:
    """The summary; ``owner=None`` lists every owner's running jobs (admin)."""
    now_ts = time.time()
    now = datetime.fromtimestamp(now_ts, UTC)
    queue = cluster.queue_stats(session)
    view = cluster.workers_seen(session, settings, now=now_ts)
    timeout = settings.heartbeat_timeout
    workers = _workers(view, now_ts, timeout)
    broker: dict[str, Any] | None = None
    if not settings.embedded:
        broker = {"url": redact(settings.broker_url), "registry": view.registry, "ping": None}
        if ping:
            broker["ping"] = celery_ping(settings, ping_timeout)
    return {
        "time": _iso(now),
        "mode": "embedded" if settings.embedded else "distributed",
        "jobs": cluster.job_counts(session),
        "queue": {"depth": queue.depth, "oldest_queued_at": _iso(queue.oldest_queued_at),
                  "oldest_wait_s": round(queue.oldest_wait_s(now), 1)},
        "stale_running": cluster.stale_running_count(session, timeout),
        "workers": {"alive": sum(w["alive"] for w in workers), "heartbeat_timeout_s": timeout, "items": workers},
        "broker": broker,
        "embedded": _embedded(settings, dispatcher, owner) if settings.embedded else None,
        "running": _running_jobs(session, owner, now),
        "running_scope": "all" if owner is None else "own",
    }


def _workers(view: Any, now_ts: float, timeout: float) -> list[dict[str, Any]]:
    workers = []
    for worker in view.workers:
        if worker.stopped_at is not None:
            state = "stopped"
        else:
            state = "alive" if worker.alive(now_ts, timeout) else "silent"
        workers.append({
            "name": worker.name, "state": state, "alive": state == "alive",
            "last_heartbeat_at": _iso(worker.last_heartbeat), "heartbeat_age_s": round(now_ts - worker.last_heartbeat, 1),
            "source": worker.source, "host": worker.host, "pid": worker.pid, "queues": worker.queues,
            "device": worker.device, "started_at": _iso(worker.started_at),
        })
    return workers


def _running_jobs(session: Any, owner: str | None, now: datetime) -> list[dict[str, Any]]:
    """Running jobs with their progress: ``owner``'s, or every owner's (with the owner) for None."""
    query = select(Job).where(Job.status == JobStatus.running.value)
    if owner is not None:
        query = query.where(Job.owner == owner)
    running = []
    for job in session.scalars(query.order_by(Job.started_at, Job.id).limit(MAX_RUNNING_LISTED)):
        heartbeat = job.heartbeat_at
        entry = {
            "id": job.id, "worker": job.worker, "progress": job.progress, "draws_done": job.draws_done,
            "attempts": job.attempts, "cancel_requested": job.cancel_requested,
            "started_at": _iso(job.started_at), "heartbeat_at": _iso(heartbeat),
            "heartbeat_age_s": round((now - heartbeat).total_seconds(), 1) if heartbeat else None,
            "num_draws": (job.resolved_config or job.config or {}).get("num_draws"),
        }
        if owner is None:
            entry["owner"] = job.owner
        running.append(entry)
    return running


def _embedded(settings: Settings, dispatcher: Any, owner: str | None) -> dict[str, Any]:
    """The embedded dispatcher, as this process sees it (None: not this process's, or none runs)."""
    embedded: dict[str, Any] = {"dispatcher_running": False,
                                "max_concurrent_jobs": settings.embedded_max_concurrent_jobs, "running_job_ids": []}
    if dispatcher is not None and hasattr(dispatcher, "running_job_ids"):
        thread = getattr(dispatcher, "_thread", None)
        embedded["dispatcher_running"] = bool(thread is not None and thread.is_alive())
        if owner is None:
            embedded["running_job_ids"] = dispatcher.running_job_ids
        embedded["running_jobs"] = len(dispatcher.running_job_ids)
        embedded["job_processes"] = dispatcher.job_processes()
    return embedded

def status_from_database(settings: Settings | None = None, *, ping: bool = False) -> dict[str, Any]:
    """The same summary read straight from the database named by the settings (``lambdahat status
    --from-database``; an operator's view, every owner's running jobs). Whether an embedded
    dispatcher runs cannot be known from here: ``embedded.dispatcher_running`` is None."""
    from backend.db import database_exists, session_scope
    from backend.settings import get_settings

    settings = settings or get_settings()
    if not database_exists(settings):  # do not leave an empty database file behind
        raise FileNotFoundError(f"no lambdahat database at {settings.database_url} (start `lambdahat serve` once, "
                                "or set LAMBDAHAT_DATABASE_URL)")
    with session_scope(settings) as session:
        summary = cluster_status(session, settings, owner=None, ping=ping)
    if summary["embedded"] is not None:
        summary["embedded"]["dispatcher_running"] = None
    summary["source"] = "database"
    return summary
