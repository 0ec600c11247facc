"""Fixtures shared by the whole suite.

Service tests run against both databases for real: a temporary SQLite file, and a fresh PostgreSQL
database created on the local server (127.0.0.1:5432, trust auth) and dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("LAMBDAHAT_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# Tests never touch the developer's real data directory.
os.environ.setdefault("LAMBDAHAT_DATA_DIR", f"/tmp/lambdahat-tests-{os.getpid()}")


def _pg_admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    from sqlalchemy import text

    name = f"lambdahat_t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        from backend.db import _engine_for

        _engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'lambdahat.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request) -> str:
    """Parametrises a test over both databases."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(tmp_path, database_url):
    """Settings for an isolated deployment: its own data dir, artifacts and database (both backends)."""
    from backend.settings import Settings

    return Settings(data_dir=tmp_path / "data", database_url=database_url, broker_url=None)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small models run fastest on one torch thread; the caller's setting is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
