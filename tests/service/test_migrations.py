"""Migrations up and down on SQLite and PostgreSQL, and the models agree with the migration tree."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from backend.db import make_engine
from backend.migrate import downgrade, upgrade
from backend.models import Base

TABLES = {"api_keys", "checkpoints", "datasets", "jobs", "job_chains", "trace_chunks"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(settings):
    url = settings.database_url
    upgrade(settings)
    assert TABLES <= _tables(url)
    downgrade(settings, "base")
    assert _tables(url) == set()
    upgrade(settings)
    assert TABLES <= _tables(url)


def test_models_match_the_migrations(settings):
    """Autogenerate finds nothing to add: every model change came with its migration."""
    upgrade(settings)
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True,
                                                                   "render_as_batch": connection.dialect.name == "sqlite"})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
