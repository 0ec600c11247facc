"""``lambdahat worker``: a Celery worker for LLC jobs.

Prefork pool with ONE process (one job at a time per worker; run one worker per GPU with
``CUDA_VISIBLE_DEVICES`` set), prefetch 1, late acknowledgement. The pool process imports torch when
its first job starts, never the parent, so CUDA is not initialised before fork. The parent also runs
the reaper thread. ``--name`` is recorded as the ``worker`` of every job this worker runs.
"""

from __future__ import annotations

import os
import socket
import sys

from backend.celery_app import DEFAULT_QUEUE, make_celery
from backend.settings import get_settings


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def worker_argv(name: str, queues: str, loglevel: str = "INFO") -> list[str]:
    return [
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        "--prefetch-multiplier=1",
        f"--hostname={name}@%h" if "@" not in name else f"--hostname={name}",
        f"--queues={queues}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]


def run_worker(name: str | None = None, queues: str = DEFAULT_QUEUE, device: str | None = None) -> None:
    settings = get_settings()
    if settings.embedded:
        sys.exit(
            "lambdahat worker needs a broker: set LAMBDAHAT_BROKER_URL (e.g. redis://127.0.0.1:6379/0) for the API "
            "and every worker. Without one, `lambdahat serve` runs jobs itself (embedded mode) and needs no worker."
        )
    queues = ",".join(q.strip() for q in (queues or "").split(",") if q.strip())
    if not queues:
        sys.exit("--queues must name at least one queue")
    # `lambdahat worker` keeps the CLI default; LAMBDAHAT_QUEUE (the queue the API sends to) wins over it.
    if queues == DEFAULT_QUEUE and os.environ.get("LAMBDAHAT_QUEUE"):
        queues = os.environ["LAMBDAHAT_QUEUE"]
    # The reaper re-enqueues onto a queue this worker consumes.
    os.environ.setdefault("LAMBDAHAT_QUEUE", queues.split(",")[0])

    name = name or default_worker_name()
    # Pool processes inherit the environment: the runner reads its name and device override from it.
    os.environ["LAMBDAHAT_WORKER_NAME"] = name
    if device:
        os.environ["LAMBDAHAT_WORKER_DEVICE"] = device
    from backend.logs import configure_celery_logging
    from backend.workers import start_registry

    configure_celery_logging(settings, worker=name)  # LAMBDAHAT_LOG_FORMAT; pool processes inherit it

    from backend.reaper import start_reaper

    app = make_celery(settings)
    reaper = start_reaper(settings)
    # Liveness for /metrics and `lambdahat status`, busy or idle (docs/observability.md).
    registry = start_registry(settings.broker_url, name, queues=queues.split(","), device=device,
                              interval=settings.heartbeat_interval)
    argv = worker_argv(name, queues, loglevel=settings.log_level)
    if settings.log_format == "json":
        argv.insert(0, "--quiet")  # (a global celery option) no ASCII-art banner among the JSON lines
    try:
        app.worker_main(argv=argv)
    finally:
        registry.stop()
        reaper.stop()
