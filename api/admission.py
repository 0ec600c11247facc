"""Admission control for SQLite deployments: at most a few requests do database work at once.

SQLite has one writer at a time, and every transaction here starts with ``BEGIN IMMEDIATE``
(backend/db.py). A request takes the write lock at its first query and releases it at commit, and in
between it hops between worker threads (dependency, endpoint, teardown). Unrestricted, many
concurrent clients can occupy every worker thread of the pool (40) waiting for the lock or for a
pooled connection, while the request holding the lock waits for a free thread to commit: nothing
moves until the 30 s busy timeout fails them with "database is locked" (bench/load.py with 50
clients reproduces it; docs/benchmarks.md). Waiting for admission in the event loop holds no
thread, so the lock holder always gets one. PostgreSQL (row locks, real concurrency) is left unrestricted.
"""

from __future__ import annotations

import asyncio
from typing import Any

# Well below both the worker-thread pool (40) and the SQLAlchemy connection pool (5 + 10 overflow).
SQLITE_MAX_CONCURRENT_REQUESTS = 8
# Streamed uploads manage their own short transactions (auth, then the final insert) and may take
# minutes to arrive: they must not hold an admission slot meanwhile.
EXEMPT = {("POST", "/v1/checkpoints"), ("POST", "/v1/datasets")}


class SQLiteAdmission:
    """ASGI middleware: HTTP requests wait (in the event loop) for one of ``limit`` slots."""

    def __init__(self, app: Any, limit: int = SQLITE_MAX_CONCURRENT_REQUESTS) -> None:
        self.app = app
        self.limit = limit
        # One semaphore per event loop (a server has one; test clients may start several in turn).
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope.get("method"), scope.get("path")) in EXEMPT:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(self.limit)
        async with slots:
            await self.app(scope, receive, send)
