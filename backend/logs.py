"""Logging for every lambdahat process: text for a terminal, or one JSON object per line.

``LAMBDAHAT_LOG_FORMAT=json`` (the compose deployment sets it) makes the API, the embedded
dispatcher, job processes and Celery workers write lines like::

    {"time": "2024-05-01T12:00:00.123Z", "level": "INFO", "logger": "lambdahat.runner",
     "message": "job 4f0c...: attempt 1 claimed by gpu0", "job_id": "4f0c...", "worker": "gpu0",
     "process": 4211}

``job_id`` and ``worker`` appear whenever they are known: passed as ``extra={"job_id": ...}``, bound
for a block of code with :func:`log_context` (the runner binds both for the job it runs), or set for
the whole process with :func:`set_process_context` (a Celery worker binds its name). Any other
``extra`` field is written too. Exceptions add ``exc_type`` and ``traceback``.

Handlers installed here are marked, so configuring twice replaces them instead of doubling every
line, and handlers that belong to someone else (pytest's capture, an embedding application) are
left alone.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("job_id", "worker")

# Per-thread/per-task context (contextvars: each thread starts empty, so a thread that works on a job
# binds it itself), and per-process defaults (inherited by forked Celery pool processes).
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"lambdahat_log_{name}", default=None) for name in CONTEXT_FIELDS
}
_process_context: dict[str, str] = {}

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is written out.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# Third-party loggers that install their own handlers: in JSON mode their records go to the root handler.
_ROUTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.app.trace", "celery.worker",
                   "celery.redirected", "kombu", "amqp", "alembic")


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Bind ``job_id`` / ``worker`` to every record logged in this block (this thread or task)."""
    tokens = [(var, var.set(fields[name])) for name, var in _context.items() if name in fields]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def job_logging(run_job: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates ``run_job(job_id, *, worker_name=None, ...)``: binds ``job_id`` and ``worker`` for the run.

    Resolves the worker name as the runner does (argument, ``LAMBDAHAT_WORKER_NAME``, ``worker-<pid>``)
    and passes it on, so the name in the log records is the one recorded on the job."""

    @functools.wraps(run_job)
    def wrapper(job_id: str, *args: Any, worker_name: str | None = None, **kwargs: Any) -> Any:
        worker = worker_name or os.environ.get("LAMBDAHAT_WORKER_NAME") or f"worker-{os.getpid()}"
        with log_context(job_id=job_id, worker=worker):
            return run_job(job_id, *args, worker_name=worker, **kwargs)

    return wrapper


def bind_context(**fields: str | None) -> None:
    """Bind for the rest of the current thread (e.g. at the start of a thread that works on one job)."""
    for name, value in fields.items():
        if name in _context:
            _context[name].set(value)


def set_process_context(**fields: str | None) -> None:
    """Defaults for every record of this process and the processes it forks (a worker's name)."""
    for name, value in fields.items():
        if name not in _context:
            raise ValueError(f"unknown log context field {name!r}; known: {', '.join(CONTEXT_FIELDS)}")
        if value is None:
            _process_context.pop(name, None)
        else:
            _process_context[name] = value


def current_context() -> dict[str, str]:
    merged = dict(_process_context)
    for name, var in _context.items():
        value = var.get()
        if value is not None:
            merged[name] = value
    return merged


class ContextFilter(logging.Filter):
    """Puts ``job_id`` / ``worker`` on each record (``extra=`` wins over the bound context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_context().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        entry["process"] = record.process
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _version, status = record.args
            entry.update(client=client, method=method, path=path, status=status)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key not in entry and not key.startswith("_") \
                    and key not in ("color_message",):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["traceback"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00,123 INFO lambdahat.runner [job=4f0c… worker=gpu0]: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if getattr(record, "job_id", None):
            parts.append(f"job={record.job_id}")
        if getattr(record, "worker", None):
            parts.append(f"worker={record.worker}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


def make_handler(log_format: str, stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler._lambdahat = True  # type: ignore[attr-defined]  # ours: replaced on reconfiguration
    return handler


def configure_logging(settings: Any = None, *, log_format: str | None = None, level: str | None = None,
                      worker: str | None = None, stream: Any = None) -> logging.Handler:
    """Install the lambdahat handler on the root logger (replacing one installed earlier).

    ``settings`` supplies ``log_format`` and ``log_level`` unless given; ``worker`` binds the worker
    name for this process. In JSON mode, uvicorn's and Celery's own handlers are removed so their
    records reach the root handler as JSON too.
    """
    if settings is None and (log_format is None or level is None):
        from backend.settings import get_settings

        settings = get_settings()
    log_format = log_format or settings.log_format
    level = (level or settings.log_level).upper()
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {log_format!r}")

    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_lambdahat", False):
            root.removeHandler(existing)
    handler = make_handler(log_format, stream)
    root.addHandler(handler)
    root.setLevel(level)
    if log_format == "json":
        route_library_loggers_to_root()
        logging.captureWarnings(True)  # Python warnings become records too, not raw stderr text
    if worker is not None:
        set_process_context(worker=worker)
    return handler


def configure_celery_logging(settings: Any, *, worker: str) -> logging.Handler:
    """``configure_logging`` for a Celery worker, and keep Celery from installing its own handlers.

    A receiver on Celery's ``setup_logging`` signal tells Celery that logging is configured; the
    prefork pool processes inherit the handler and the worker name."""
    from celery.signals import setup_logging

    handler = configure_logging(settings, worker=worker)
    setup_logging.connect(_logging_already_configured, weak=False)
    return handler


def _logging_already_configured(**_: Any) -> None:
    return None


def route_library_loggers_to_root() -> None:
    """Drop the handlers uvicorn/Celery install on their own loggers; their records propagate to root."""
    for name in _ROUTED_LOGGERS:
        library_logger = logging.getLogger(name)
        for existing in list(library_logger.handlers):
            library_logger.removeHandler(existing)
        library_logger.propagate = True


def is_json_logging() -> bool:
    return any(getattr(h, "_lambdahat", False) and isinstance(h.formatter, JsonFormatter)
               for h in logging.getLogger().handlers)
