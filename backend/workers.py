"""Worker liveness: a small registry in the broker, plus the heartbeats jobs leave in the database.

Every ``lambdahat worker`` (the Celery parent process) writes its entry to the Redis hash
``lambdahat:workers:<queue>`` every ``LAMBDAHAT_HEARTBEAT_INTERVAL`` seconds, busy or idle: name, host, pid,
queues, device, when it started and when it last beat. A clean shutdown marks the entry stopped.
Every API process reads the same hash, so ``/metrics`` and ``/v1/status`` answer the same whichever
process is asked. Busy workers are also visible without the registry, through the ``heartbeat_at``
of the jobs they run (the database is the record; the registry only adds idle workers and host
details). Entries not refreshed for ``REGISTRY_RETENTION_S`` are pruned, so renamed or retired
workers disappear after a week. ``<queue>`` is the shared queue the API sends jobs to
(``LAMBDAHAT_QUEUE``, default ``lambdahat``; a worker uses the first queue it consumes), so two
deployments sharing one Redis database keep separate registries.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.models import Job

log = logging.getLogger("lambdahat.workers")

REGISTRY_KEY_PREFIX = "lambdahat:workers:"
REGISTRY_RETENTION_S = 7 * 24 * 3600.0
# Workers whose last sign of life is older than this are left out of metrics and status (bounded
# label cardinality when workers get a new default name, host-pid, at every restart).
WORKER_WINDOW_S = 24 * 3600.0


@dataclass
class WorkerSeen:
    name: str
    last_heartbeat: float  # unix seconds
    source: str  # "registry" (the worker process itself) or "jobs" (a job it ran)
    host: str | None = None
    pid: int | None = None
    queues: list[str] | None = None
    device: str | None = None
    started_at: float | None = None
    stopped_at: float | None = None

    def alive(self, now: float, timeout: float) -> bool:
        return self.stopped_at is None and now - self.last_heartbeat <= timeout


def registry_key(queue: str | None = None) -> str:
    """The registry hash of the deployment whose shared queue is ``queue`` (default: this process's)."""
    if queue is None:
        from backend.celery_app import queue_name

        queue = queue_name()
    return REGISTRY_KEY_PREFIX + queue


def redis_client(broker_url: str, timeout: float = 2.0) -> Any:
    import redis

    return redis.Redis.from_url(broker_url, socket_connect_timeout=timeout, socket_timeout=timeout)


class WorkerRegistryThread(threading.Thread):
    """Writes this worker's registry entry every ``interval`` seconds until ``stop()``."""

    def __init__(self, broker_url: str, name: str, *, queues: Sequence[str], device: str | None,
                 interval: float, key: str | None = None) -> None:
        super().__init__(name="lambdahat-worker-registry", daemon=True)
        self.broker_url = broker_url
        self.key = key or registry_key()
        self.entry: dict[str, Any] = {
            "name": name, "host": socket.gethostname(), "pid": os.getpid(), "queues": list(queues),
            "device": device, "started_at": time.time(),
        }
        self.interval = max(0.2, interval)
        self._stop_event = threading.Event()
        self._client: Any = None

    def beat(self, *, stopped: bool = False) -> None:
        entry = dict(self.entry, last_heartbeat=time.time())
        if stopped:
            entry["stopped_at"] = entry["last_heartbeat"]
        if self._client is None:
            self._client = redis_client(self.broker_url)
        self._client.hset(self.key, self.entry["name"], json.dumps(entry))

    def run(self) -> None:
        failing = False
        while True:
            try:
                self.beat()
                failing = False
            except Exception as exc:  # noqa: BLE001 - the broker may be restarting; keep trying
                if not failing:
                    log.warning("cannot write the worker registry (%s: %s); retrying", type(exc).__name__, exc)
                failing = True
                self._client = None
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        try:
            self.beat(stopped=True)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not mark worker %s stopped in the registry: %s", self.entry["name"], exc)


def start_registry(broker_url: str, name: str, *, queues: Sequence[str], device: str | None,
                   interval: float, key: str | None = None) -> WorkerRegistryThread:
    thread = WorkerRegistryThread(broker_url, name, queues=queues, device=device, interval=interval, key=key)
    thread.start()
    return thread


def read_registry(broker_url: str, *, now: float | None = None, timeout: float = 2.0,
                  key: str | None = None) -> list[WorkerSeen]:
    """Entries of the broker's worker registry (raises if the broker cannot be read)."""
    now = time.time() if now is None else now
    key = key or registry_key()
    client = redis_client(broker_url, timeout)
    raw = client.hgetall(key)
    seen, expired = [], []
    for field, value in raw.items():
        try:
            entry = json.loads(value)
            last = float(entry["last_heartbeat"])
        except (ValueError, KeyError, TypeError):
            expired.append(field)  # not ours or corrupt: drop it
            continue
        if now - last > REGISTRY_RETENTION_S:
            expired.append(field)
            continue
        seen.append(WorkerSeen(
            name=str(entry.get("name") or field.decode(errors="replace")), last_heartbeat=last, source="registry",
            host=entry.get("host"), pid=entry.get("pid"), queues=entry.get("queues"), device=entry.get("device"),
            started_at=entry.get("started_at"), stopped_at=entry.get("stopped_at"),
        ))
    if expired:
        client.hdel(key, *expired)
    return seen


def seen_in_jobs(session: Session, *, since: datetime) -> list[WorkerSeen]:
    """Each worker's latest job heartbeat (claims, progress beats and finishing all write it)."""

    rows = session.execute(
        select(Job.worker, func.max(Job.heartbeat_at))
        .where(Job.worker.is_not(None), Job.heartbeat_at >= since)
        .group_by(Job.worker)
    ).all()
    return [WorkerSeen(name=name, last_heartbeat=last.timestamp(), source="jobs")
            for name, last in rows if last is not None]


def merge(*sources: Sequence[WorkerSeen]) -> list[WorkerSeen]:
    """One entry per worker name: the registry's details, with the latest heartbeat of any source."""
    merged: dict[str, WorkerSeen] = {}
    for entries in sources:
        for entry in entries:
            known = merged.get(entry.name)
            if known is None:
                merged[entry.name] = entry
                continue
            registry, other = (known, entry) if known.source == "registry" else (entry, known)
            if other.last_heartbeat > registry.last_heartbeat and registry.stopped_at is not None \
                    and other.last_heartbeat > registry.stopped_at:
                registry.stopped_at = None  # the name came back after a stop (restarted worker)
            registry.last_heartbeat = max(registry.last_heartbeat, other.last_heartbeat)
            merged[entry.name] = registry
    return sorted(merged.values(), key=lambda w: w.name)
