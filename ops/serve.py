"""``lambdahat serve``: prepare the data dir, database and local key, then run the API with uvicorn.

On first start a local key is created and written to ``<data_dir>/api_key`` (mode 0600, owner
"local", scopes admin and run-code): the CLI and the client read it from there, so a laptop user
never handles keys. Binding anything but a loopback address requires at least one key created
explicitly (``lambdahat keys create``): the local key alone must not open the service to a network.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

from sqlalchemy import select

from api.auth.keys import authenticate, create_key, revoke_key
from backend.db import session_scope
from backend.migrate import prepare_embedded_database
from backend.models import ApiKey
from backend.settings import Settings, get_settings
from backend.storage import ArtifactStore

LOCAL_KEY_FILE = "api_key"
LOCAL_OWNER = "local"
LOCAL_KEY_NAME = "local"  # with owner "local": reserved for the server's own key


class ServerConfigError(RuntimeError):
    """The server refuses to start; the message says what to do."""


def local_key_path(settings: Settings) -> Path:
    return settings.data_dir / LOCAL_KEY_FILE


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume it is reachable from outside


def _is_local_key(row: ApiKey) -> bool:
    return row.owner == LOCAL_OWNER and row.name == LOCAL_KEY_NAME


def ensure_local_key(settings: Settings) -> str:
    """The key in ``<data_dir>/api_key``, created (or replaced, if the database no longer knows it).

    There is at most one active local key: when a new one is made, older local keys (whose plaintext
    only ever lived in that file) are revoked.
    """
    path = local_key_path(settings)
    if path.exists():
        os.chmod(path, 0o600)  # repair permissions loosened by hand
        existing = path.read_text().strip()
        with session_scope(settings) as session:
            if existing and authenticate(session, existing) is not None:
                return existing
    with session_scope(settings) as session:
        for row in session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))):
            if _is_local_key(row):
                revoke_key(session, row.id)
        _, plaintext = create_key(session, name=LOCAL_KEY_NAME, owner=LOCAL_OWNER, scopes=["admin", "run-code"])
    # Write with owner-only permissions from the start (never world-readable, even briefly).
    tmp = path.with_name(f".{LOCAL_KEY_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(plaintext + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return plaintext


def explicit_key_count(settings: Settings) -> int:
    """Active keys other than the server's local key (made with ``lambdahat keys create``)."""
    with session_scope(settings) as session:
        rows = session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))).all()
        return sum(1 for row in rows if not _is_local_key(row))


def prepare(settings: Settings, host: str) -> str:
    """Everything ``serve`` does before listening; returns the local key. Raises ServerConfigError."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    prepare_embedded_database(settings)
    store = ArtifactStore(settings)
    store.root.mkdir(parents=True, exist_ok=True)
    store.cleanup_staging()
    local_key = ensure_local_key(settings)
    if not is_loopback(host) and explicit_key_count(settings) == 0:
        raise ServerConfigError(
            f"refusing to bind {host}: it is not a loopback address and no API key exists besides the local one "
            f"in {local_key_path(settings)}. Create keys for the clients that will connect "
            "(lambdahat keys create --name NAME), or bind 127.0.0.1."
        )
    return local_key


def run_server(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    import uvicorn

    from api.app import create_app
    from backend.logs import configure_logging

    settings = settings or get_settings()
    configure_logging(settings)
    json_logs = settings.log_format == "json"
    try:
        prepare(settings, host)
    except ServerConfigError as exc:
        if json_logs:
            logging.getLogger("lambdahat.server").error("%s", exc)
        else:
            print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    mode = "embedded (local job dispatcher)" if settings.embedded else f"distributed (broker {settings.broker_url})"
    banner = (f"lambdahat API on http://{host}:{port} ({mode}); data dir {settings.data_dir}; "
              f"local API key in {local_key_path(settings)}")
    if json_logs:
        logging.getLogger("lambdahat.server").info("%s", banner)
    else:
        print(banner, flush=True)
    # JSON logs: uvicorn's records go through the root handler (log_config=None keeps uvicorn's own off).
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower(),
                log_config=None if json_logs else uvicorn.config.LOGGING_CONFIG)
