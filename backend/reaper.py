"""The reaper: the database, not the broker, decides that a job is lost.

Runs periodically inside every ``lambdahat worker`` (a thread in the Celery parent process) and inside
the API in distributed mode. Every change is a conditional UPDATE, so any number of reapers can run
at once and each job is released by exactly one of them.

1. Running jobs whose heartbeat is older than ``LAMBDAHAT_HEARTBEAT_TIMEOUT``: their worker died (or
   its machine vanished). Re-queued with attempts kept, and re-enqueued; after ``max_attempts``
   attempts the job fails with the reason; a job whose cancellation was requested becomes cancelled.
2. Queued jobs nobody claimed for a while whose message is no longer in the broker (e.g. Redis
   restarted without persistence and lost its queue): re-enqueued. When the broker cannot be
   inspected, jobs waiting longer than a long fallback interval are re-enqueued anyway (a duplicate
   delivery is harmless: the claim in the database lets only one run).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from backend import lifecycle
from backend.db import session_scope
from backend.models import Job
from backend.settings import Settings

log = logging.getLogger("lambdahat.reaper")

EnqueueFn = Callable[[Sequence[str]], None]


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    reenqueued: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled or self.reenqueued)


def reap_interval(settings: Settings) -> float:
    """How often to look: a few times per heartbeat timeout, between 0.5 s and 30 s."""
    return max(0.5, min(settings.heartbeat_timeout / 3.0, 30.0))


def unclaimed_grace(settings: Settings) -> float:
    """A queued job younger than this may still be on its way to the broker (committed, not yet sent)."""
    return max(10.0, 2.0 * settings.heartbeat_interval)


def blind_requeue_after(settings: Settings) -> float:
    """Fallback when the broker cannot be inspected: re-send jobs waiting longer than this."""
    return max(600.0, 10.0 * settings.heartbeat_timeout)


def reap_once(settings: Settings, enqueue: EnqueueFn | None = None,
              broker_job_ids: Callable[[], set[str] | None] | None = None) -> ReapReport:
    """One pass. ``enqueue`` sends job ids to the workers (default: ``backend.queue.enqueue``)."""
    if enqueue is None:
        from backend.queue import enqueue as enqueue_to_broker

        def enqueue(ids: Sequence[str]) -> None:
            enqueue_to_broker(settings, ids)

    report = ReapReport()
    cutoff = lifecycle.seconds_ago(settings.heartbeat_timeout)
    with session_scope(settings) as session:
        for job in lifecycle.stale_running_jobs(session, cutoff=cutoff):
            released = lifecycle.release_lost_attempt(
                session, job, max_attempts=settings.max_attempts,
                why=f"no heartbeat for over {settings.heartbeat_timeout:g} s",
                extra_conditions=[Job.heartbeat_at < cutoff],
            )
            if released is None:
                continue
            getattr(report, released.outcome).append(job.id)  # "requeued" | "failed" | "cancelled"
    if report.requeued:
        log.warning("re-queued %d job(s) whose worker stopped heart-beating: %s", len(report.requeued),
                    ", ".join(report.requeued))
        enqueue(report.requeued)
    if report.failed:
        log.error("failed %d job(s) that lost their worker too often: %s", len(report.failed), ", ".join(report.failed))

    if not settings.embedded:
        report.reenqueued = _reenqueue_lost_messages(settings, enqueue, broker_job_ids)
    return report


def _reenqueue_lost_messages(settings: Settings, enqueue: EnqueueFn,
                             broker_job_ids: Callable[[], set[str] | None] | None) -> list[str]:
    in_broker = (broker_job_ids or (lambda: job_ids_in_broker(settings)))()
    if in_broker is None:
        waited_since = lifecycle.seconds_ago(blind_requeue_after(settings))
    else:
        waited_since = lifecycle.seconds_ago(unclaimed_grace(settings))
    resent: list[str] = []
    with session_scope(settings) as session:
        candidates = lifecycle.queued_job_ids(session, limit=1000, queued_before=waited_since)
        for job_id in candidates:
            if in_broker is not None and job_id in in_broker:
                continue
            if lifecycle.touch_queued(session, job_id, queued_before=waited_since):
                resent.append(job_id)
    if resent:
        log.warning("re-enqueued %d queued job(s) missing from the broker: %s", len(resent), ", ".join(resent))
        enqueue(resent)
    return resent


def job_ids_in_broker(settings: Settings) -> set[str] | None:
    """Job ids of run-job messages waiting in the Redis queue or reserved by a worker (unacked).

    Reads kombu's Redis layout (a list per queue and priority, an ``unacked`` hash); None when the
    broker is not Redis or cannot be read, so the caller falls back to time-based re-sending.
    """
    from backend.celery_app import TASK_NAME, queue_name

    url = settings.broker_url or ""
    if not url.startswith(("redis://", "rediss://")):
        return None
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
        queue = queue_name()
        keys = [queue] + [f"{queue}\x06\x16{p}" for p in (3, 6, 9)]
        waiting = [m for key in keys for m in client.lrange(key, 0, -1)]
        reserved = client.hvals("unacked")  # each: JSON [message, exchange, routing_key]
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot inspect the broker (%s: %s); falling back to time-based re-enqueueing",
                    type(exc).__name__, exc)
        return None
    messages = [_parse(m) for m in waiting]
    for entry in map(_parse, reserved):
        if isinstance(entry, list) and entry:
            messages.append(entry[0])
    ids = {_job_id_of(m, TASK_NAME) for m in messages if isinstance(m, dict)}
    ids.discard(None)
    return ids  # type: ignore[return-value]


def _parse(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _job_id_of(message: dict, task_name: str) -> str | None:
    try:
        if message.get("headers", {}).get("task") != task_name:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if args and isinstance(args[0], str) else None
    except Exception:  # noqa: BLE001 - some other producer's message
        return None


class ReaperThread(threading.Thread):
    """Calls ``reap_once`` every ``reap_interval`` seconds (with jitter) until ``stop()``."""

    def __init__(self, settings: Settings, enqueue: EnqueueFn | None = None) -> None:
        super().__init__(name="lambdahat-reaper", daemon=True)
        self.settings = settings
        self.enqueue = enqueue
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = reap_interval(self.settings)
        while not self._stop_event.wait(interval * random.uniform(0.8, 1.2)):
            try:
                reap_once(self.settings, self.enqueue)
            except Exception:  # noqa: BLE001 - the next pass retries (database or broker briefly down)
                log.exception("reaper pass failed; retrying in %.1f s", interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def start_reaper(settings: Settings, enqueue: EnqueueFn | None = None) -> ReaperThread:
    thread = ReaperThread(settings, enqueue)
    thread.start()
    return thread
