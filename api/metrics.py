"""``GET /metrics``: Prometheus text format, correct with any number of API and worker processes.

Two kinds of series:

- **Cluster series** (``lambdahat_jobs``, queue depth, job durations, SGLD speed, worker heartbeats,
  upload bytes, ...) are computed at scrape time from the shared database (and the broker's worker
  registry) by :class:`ClusterCollector`. Workers never need to be scraped: whatever process did the
  work, every API process answers the same numbers. With several API instances, aggregate them with
  ``max`` (not ``sum``): each instance reports the whole cluster.
- **Request series** (``lambdahat_http_requests_total``, ``lambdahat_http_request_duration_seconds``)
  count this API instance's own HTTP traffic. A single ``lambdahat serve`` process is one scrape
  target and its counters are its own. When several server processes share one port (gunicorn or
  ``uvicorn --workers``), set ``PROMETHEUS_MULTIPROC_DIR`` to a directory they share (empty at
  start) before they start: prometheus-client then keeps the counters in per-process files there and
  every process serves their sum.

``LAMBDAHAT_METRICS_TOKEN`` (unset by default) makes ``/metrics`` require
``Authorization: Bearer <token>``; nothing exposed carries owner data. See docs/observability.md.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response, status
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from backend import cluster
from backend.settings import Settings
from backend.workers import WORKER_WINDOW_S

log = logging.getLogger("lambdahat.metrics")

VERSION = "0.1.0"
# The classic text format every Prometheus version parses (metric names here are all legacy-safe).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
disable_created_metrics()  # no *_created series: they double the output and no query here needs them
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# Per-process request metrics. Not registered in any global registry: each app's registry exposes them
# (single process), or MultiProcessCollector reads every process's files (PROMETHEUS_MULTIPROC_DIR).
HTTP_REQUESTS = Counter(
    "lambdahat_http_requests", "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"], registry=None,
)
HTTP_LATENCY = Histogram(
    "lambdahat_http_request_duration_seconds", "Time to answer an HTTP request, by method and route template.",
    ["method", "route"], registry=None,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


class ClusterCollector:
    """Collects the cluster series from the database on every scrape."""

    def __init__(self, settings: Settings, session_factory: Any) -> None:
        self.settings = settings
        self.session_factory = session_factory

    def describe(self) -> Iterable[Metric]:
        return []  # no collection at registration time (the database may not be up yet)

    def collect(self) -> Iterable[Metric]:
        started = time.perf_counter()
        metrics: list[Metric] = []
        info = GaugeMetricFamily("lambdahat_info", "The answering API's version and mode (always 1).",
                                 labels=["version", "mode"])
        info.add_metric([VERSION, "embedded" if self.settings.embedded else "distributed"], 1)
        metrics.append(info)
        database_up = GaugeMetricFamily("lambdahat_database_up", "1 if the database answered this scrape.")
        session = self.session_factory()
        try:
            metrics.extend(self._from_database(session))
            database_up.add_metric([], 1)
        except Exception as exc:  # noqa: BLE001 - a scrape must still answer, saying the database is down
            log.warning("metrics: database query failed (%s: %s)", type(exc).__name__, exc)
            session.rollback()
            database_up.add_metric([], 0)
        finally:
            session.close()
        metrics.append(database_up)
        elapsed = GaugeMetricFamily("lambdahat_metrics_collect_seconds", "Time this scrape spent querying.")
        elapsed.add_metric([], time.perf_counter() - started)
        metrics.append(elapsed)
        return metrics

    def _from_database(self, session: Any) -> list[Metric]:
        now = time.time()
        return [*self._job_metrics(session), *self._speed_metrics(session, now),
                *self._worker_metrics(session, now), *self._upload_metrics(session)]

    def _job_metrics(self, session: Any) -> list[Metric]:
        """Jobs by status, the queue, stale running jobs, and the run-time histogram."""
        metrics: list[Metric] = []
        jobs = GaugeMetricFamily("lambdahat_jobs", "Jobs by status (all owners).", labels=["status"])
        for job_status, count in cluster.job_counts(session).items():
            jobs.add_metric([job_status], count)
        metrics.append(jobs)

        queue = cluster.queue_stats(session)
        depth = GaugeMetricFamily("lambdahat_queue_depth", "Jobs queued and waiting for a worker.")
        depth.add_metric([], queue.depth)
        oldest = GaugeMetricFamily("lambdahat_queue_oldest_age_seconds",
                                   "How long the oldest queued job has waited (0 when none waits).")
        oldest.add_metric([], queue.oldest_wait_s(datetime.now(UTC)))
        stale = GaugeMetricFamily(
            "lambdahat_jobs_stale", "Running jobs whose heartbeat is older than LAMBDAHAT_HEARTBEAT_TIMEOUT "
            "(the reaper re-queues them; a lasting non-zero value means no reaper runs).")
        stale.add_metric([], cluster.stale_running_count(session, self.settings.heartbeat_timeout))
        metrics += [depth, oldest, stale]

        histogram = cluster.duration_histogram(session)
        durations = HistogramMetricFamily(
            "lambdahat_job_duration_seconds",
            "Run time of finished jobs (start of the last attempt to the end), by final status.",
            labels=["status"])
        for job_status in cluster.FINISHED_STATUSES:
            buckets = [(_bound(b), c) for b, c in zip(cluster.DURATION_BUCKETS, histogram.buckets[job_status],
                                                      strict=True)]
            buckets.append(("+Inf", histogram.count[job_status]))
            durations.add_metric([job_status], buckets, histogram.total_s[job_status])
        metrics.append(durations)
        return metrics

    def _speed_metrics(self, session: Any, now: float) -> list[Metric]:
        """Sampler speed of the latest succeeded job per worker."""
        metrics: list[Metric] = []
        since = datetime.fromtimestamp(now - WORKER_WINDOW_S, UTC)
        speed = GaugeMetricFamily(
            "lambdahat_sgld_steps_per_second",
            "Sampler steps per second (all chains advance together) of the latest succeeded job per worker.",
            labels=["worker"])
        chain_speed = GaugeMetricFamily(
            "lambdahat_sgld_chain_steps_per_second",
            "Chain-steps per second (steps/s x chains) of the latest succeeded job per worker.", labels=["worker"])
        for entry in cluster.latest_throughput(session, since=since):
            if entry.steps_per_s is not None:
                speed.add_metric([entry.worker], entry.steps_per_s)
            if entry.chain_steps_per_s is not None:
                chain_speed.add_metric([entry.worker], entry.chain_steps_per_s)
        metrics += [speed, chain_speed]
        return metrics

    def _worker_metrics(self, session: Any, now: float) -> list[Metric]:
        """Heartbeats and liveness of workers, and (distributed) whether the broker's registry answers."""
        metrics: list[Metric] = []
        view = cluster.workers_seen(session, self.settings, now=now)
        heartbeat = GaugeMetricFamily(
            "lambdahat_worker_last_heartbeat_seconds",
            "Unix time of each worker's latest heartbeat (worker registry or a job it ran), seen in the last 24 h; "
            "workers that stopped cleanly are left out.", labels=["worker"])
        worker_up = GaugeMetricFamily(
            "lambdahat_worker_up", "1 if the worker's latest heartbeat is within LAMBDAHAT_HEARTBEAT_TIMEOUT, 0 if it "
            "went silent (workers that stopped cleanly are left out).", labels=["worker"])
        alive = 0
        for worker in view.workers:
            if worker.stopped_at is not None:
                continue  # a planned stop (scale-down, upgrade) is not an outage
            is_alive = worker.alive(now, self.settings.heartbeat_timeout)
            heartbeat.add_metric([worker.name], worker.last_heartbeat)
            worker_up.add_metric([worker.name], 1 if is_alive else 0)
            alive += is_alive
        workers_alive = GaugeMetricFamily(
            "lambdahat_workers_alive", "Workers with a heartbeat within LAMBDAHAT_HEARTBEAT_TIMEOUT "
            "(in embedded mode: the dispatcher's, only while it runs jobs).")
        workers_alive.add_metric([], alive)
        metrics += [heartbeat, worker_up, workers_alive]
        if not self.settings.embedded:
            broker_up = GaugeMetricFamily("lambdahat_broker_up", "1 if the broker's worker registry could be read.")
            broker_up.add_metric([], 1 if view.registry == "ok" else 0)
            metrics.append(broker_up)
        return metrics

    def _upload_metrics(self, session: Any) -> list[Metric]:
        """Uploaded artifacts kept, and the bytes they take as uploaded and as stored."""
        metrics: list[Metric] = []
        totals = cluster.upload_totals(session)
        uploads = GaugeMetricFamily("lambdahat_uploads", "Uploaded artifacts currently kept, by kind.", labels=["kind"])
        upload_bytes = GaugeMetricFamily(
            "lambdahat_upload_bytes", "Bytes of uploaded artifacts currently kept, by kind (as uploaded: "
            "identical content uploaded twice counts twice).", labels=["kind"])
        stored_bytes = GaugeMetricFamily(
            "lambdahat_stored_bytes", "Bytes actually stored, by kind (distinct content; uploads are content-addressed).",
            labels=["kind"])
        for kind, total in totals.items():
            uploads.add_metric([kind], total.count)
            upload_bytes.add_metric([kind], total.bytes)
            stored_bytes.add_metric([kind], total.stored_bytes)
        metrics += [uploads, upload_bytes, stored_bytes]
        return metrics

def _bound(value: float) -> str:
    return f"{value:g}" if value != int(value) else f"{value:.1f}"


def build_registry(settings: Settings, session_factory: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(settings, session_factory))
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(HTTP_REQUESTS)
        registry.register(HTTP_LATENCY)
    return registry


class RequestMetricsMiddleware:
    """Counts every HTTP request by method, route template (never the raw path) and status."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500  # an exception before the response started is answered as 500

        async def send_and_record_status(message: dict[str, Any]) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            method = scope.get("method", "GET") if scope.get("method") in _METHODS else "other"
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # unknown paths: one series
            HTTP_REQUESTS.labels(method, route, str(status_code)).inc()
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)


router = APIRouter(tags=["observability"])


@router.get("/metrics", include_in_schema=True, response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"},
                       401: {"description": "LAMBDAHAT_METRICS_TOKEN is set and was not sent"}})
def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format). Aggregate counts only: no owner data."""
    settings: Settings = request.app.state.settings
    if settings.metrics_token:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.metrics_token.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                detail="/metrics needs 'Authorization: Bearer <LAMBDAHAT_METRICS_TOKEN>'",
                                headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE)


def install_metrics(app: FastAPI, settings: Settings) -> None:
    """``/metrics`` and the request-counting middleware, on an app whose ``state.session_factory`` is set."""
    app.state.metrics_registry = build_registry(settings, app.state.session_factory)
    app.add_middleware(RequestMetricsMiddleware)
    app.include_router(router)


__all__ = ["ClusterCollector", "build_registry", "install_metrics", "router"]
