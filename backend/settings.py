"""Service settings, read from the environment with the ``LAMBDAHAT_`` prefix.

One ``Settings`` object serves the API, the workers and the CLI, so that every process of one
deployment agrees on where the database, the broker and the artifacts are.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Nothing is ever downloaded from the Hugging Face Hub: every process of the service (API, inspector,
# workers, job processes) imports this module, and the subprocesses it starts inherit the variables,
# so transformers and huggingface_hub run offline wherever the service runs them.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update(OFFLINE_ENV)

# "s3://bucket/prefix", "gs://...", "memory://...": an fsspec URL rather than a local directory.
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote_url(value: str | Path | None) -> bool:
    return isinstance(value, str) and bool(_URL.match(value)) and not value.startswith("file://")


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
    # Unset: <data_dir>/artifacts. A shared volume in multi-machine deployments, or an fsspec URL
    # (s3://bucket/prefix; needs the matching fsspec backend, e.g. `pip install lambdahat[s3]`).
    artifact_dir: Path | str | None = None
    # Remote artifact stores only: keyword arguments for the fsspec filesystem as a JSON object, e.g.
    # {"endpoint_url": "http://minio:9000"}; credentials are better left to the backend's own env vars.
    # (Kept as text so that every process hands it on verbatim in LAMBDAHAT_* variables.)
    artifact_storage_options: str = ""
    # Remote artifact stores only: where uploads are staged and workers keep downloaded artifacts.
    artifact_cache_dir: Path | None = None  # unset: <data_dir>/artifact-cache
    artifact_cache_max_bytes: int = 20 * 1024**3  # least recently used artifacts are evicted beyond this

    # Observability (docs/observability.md).
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line
    log_level: str = "INFO"
    # Unset: /metrics is open (aggregate counts only, no owner data). Set: scrapers must send
    # "Authorization: Bearer <metrics_token>".
    metrics_token: str | None = None

    max_upload_bytes: int = 2 * 1024**3
    # Archives of save_pretrained directories: the most bytes and members one may unpack to.
    archive_max_unpacked_bytes: int = Field(default=8 * 1024**3, ge=1)
    archive_max_members: int = Field(default=10_000, ge=1)
    # Memory of the device one job runs on, for the submit-time memory check. 0: the host's RAM in
    # embedded mode (the job runs on this machine); with a broker, no check unless this is set.
    worker_memory_bytes: int = Field(default=0, ge=0)
    heartbeat_interval: float = 5.0  # seconds between a running job's heartbeats
    heartbeat_timeout: float = 60.0  # a running job silent this long is re-queued by the reaper
    max_attempts: int = 3  # a job that kills its worker this many times is failed
    job_time_limit: float = 6 * 3600.0  # seconds one attempt may run
    max_draws: int = 100_000
    max_queued_jobs_per_owner: int = 10_000
    embedded_max_concurrent_jobs: int = 1
    # torch threads per job: 0 sizes them to the cores the job can have, now and while it runs
    # (worker/cores.py); a number fixes the count.
    job_threads: int = Field(default=0, ge=0)
    # A warm job process (embedded) or Celery pool process whose resident memory exceeds this after a
    # job is replaced by a fresh one before the next job (0: never).
    job_process_max_rss_bytes: int = Field(default=2 * 1024**3, ge=0)

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser()
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        if is_remote_url(self.artifact_dir):
            self.artifact_dir = str(self.artifact_dir).rstrip("/")
        else:
            self.artifact_dir = Path(str(self.artifact_dir).removeprefix("file://")).expanduser()
        if self.artifact_cache_dir is None:
            self.artifact_cache_dir = self.data_dir / "artifact-cache"
        self.artifact_cache_dir = Path(self.artifact_cache_dir).expanduser()
        self.log_level = self.log_level.upper()
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {self.log_level!r}")
        self.storage_options()  # a malformed JSON object fails at start, not at the first upload
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'lambdahat.db'}"
        return self

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def artifacts_remote(self) -> bool:
        """Artifacts live behind an fsspec URL (e.g. S3), not in a local or mounted directory."""
        return isinstance(self.artifact_dir, str)

    def storage_options(self) -> dict[str, Any]:
        """``artifact_storage_options`` parsed (a JSON object)."""
        if not self.artifact_storage_options.strip():
            return {}
        try:
            options = json.loads(self.artifact_storage_options)
        except ValueError as exc:
            raise ValueError(f"artifact_storage_options is not valid JSON: {exc}") from None
        if not isinstance(options, dict):
            raise ValueError("artifact_storage_options must be a JSON object, e.g. {\"endpoint_url\": \"http://minio:9000\"}")
        return options

    @property
    def is_sqlite(self) -> bool:
        assert self.database_url is not None
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
