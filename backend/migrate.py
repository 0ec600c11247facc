"""Run Alembic migrations programmatically (``lambdahat db upgrade``), and the embedded default's
own schema upkeep (:func:`prepare_embedded_database`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from backend.settings import Settings, get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: Settings | None = None) -> Config:
    settings = settings or get_settings()
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", settings.database_url or "")
    return cfg


def upgrade(settings: Settings | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings), revision)


def prepare_embedded_database(settings: Settings) -> None:
    """On the embedded default (SQLite in the data directory) every command that opens the database
    creates or upgrades its schema first, so a fresh laptop needs no setup step. A server database
    (PostgreSQL) is migrated by its operator, once per release: ``lambdahat db upgrade``."""
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        upgrade(settings)
