"""Service settings, read from the environment with the ``LAMBDAHAT_`` prefix.

One ``Settings`` object serves the API, the workers and the CLI, so that every process of one
deployment agrees on where the database, the broker and the artifacts are.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """A per-user directory: ``$XDG_DATA_HOME/lambdahat`` or ``~/.local/share/lambdahat``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lambdahat"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAMBDAHAT_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    # Unset: a SQLite file in the data dir. PostgreSQL: postgresql+psycopg://user@host/db
    database_url: str | None = None
    # Unset: embedded mode (local dispatcher, a worker subprocess per job). redis://...: Celery.
    broker_url: str | None = None
    # Unset: <data_dir>/artifacts. A shared volume in multi-machine deployments.
    artifact_dir: Path | None = None

    max_upload_bytes: int = 2 * 1024**3
    heartbeat_interval: float = 5.0  # seconds between a running job's heartbeats
    heartbeat_timeout: float = 60.0  # a running job silent this long is re-queued by the reaper
    max_attempts: int = 3  # a job that kills its worker this many times is failed
    job_time_limit: float = 6 * 3600.0  # seconds one attempt may run
    max_draws: int = 100_000
    max_queued_jobs_per_owner: int = 10_000
    embedded_max_concurrent_jobs: int = 1

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser()
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        self.artifact_dir = Path(self.artifact_dir).expanduser()
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'lambdahat.db'}"
        return self

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def is_sqlite(self) -> bool:
        assert self.database_url is not None
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
