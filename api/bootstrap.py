"""``lambdahat keys ensure``: register an API key whose plaintext an operator provides (a deployment secret).

``lambdahat serve --host 0.0.0.0`` refuses to start until a key other than the server's local one
exists (api/server.py). In a container deployment that key comes from a secret file: this stores its
hash (never the key) with the given name, owner and scopes, and does nothing when the same key is
already registered, so it can run at every start (the compose ``api-key`` service does).
"""

from __future__ import annotations

import string
from pathlib import Path

from sqlalchemy import select

from api.auth.keys import SCOPES, hash_key
from backend.db import session_scope
from backend.models import ApiKey
from backend.settings import Settings

MIN_KEY_LENGTH = 32
_ALLOWED = frozenset(string.ascii_letters + string.digits + "-_.~+/=")


class KeyBootstrapError(ValueError):
    """The key cannot be registered; the message says why."""


def read_key_file(path: Path) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise KeyBootstrapError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    if not text:
        raise KeyBootstrapError(f"the key file {path} is empty")
    return text


def check_plaintext(plaintext: str) -> None:
    if len(plaintext) < MIN_KEY_LENGTH:
        raise KeyBootstrapError(
            f"the key is {len(plaintext)} characters long; use at least {MIN_KEY_LENGTH} random characters, e.g. "
            "python -c 'import secrets; print(\"lh_\" + secrets.token_urlsafe(32))'")
    bad = sorted(set(plaintext) - _ALLOWED)
    if bad:
        raise KeyBootstrapError(f"the key contains characters not allowed in an HTTP bearer token: {bad!r}")


def ensure_key(settings: Settings, *, name: str, owner: str | None, scopes: list[str], plaintext: str) -> tuple[ApiKey, bool]:
    """The active key with this plaintext, registered now if needed. Returns ``(row, created)``."""
    check_plaintext(plaintext)
    owner = owner or name
    if name == "local" and owner == "local":
        raise KeyBootstrapError("the name 'local' with owner 'local' is reserved for the server's own key")
    scopes = sorted(set(scopes))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise KeyBootstrapError(f"unknown scope(s) {unknown}; known scopes: {list(SCOPES)}")
    digest = hash_key(plaintext)
    if settings.is_sqlite:  # a fresh laptop data dir: create the schema first (PostgreSQL: `lambdahat db upgrade`)
        from backend.migrate import upgrade

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings)
    with session_scope(settings) as session:
        existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if existing is not None:
            if existing.revoked_at is not None:
                raise KeyBootstrapError(
                    f"this key (prefix {existing.prefix}) was revoked; put a new random key in the secret")
            if existing.owner != owner or sorted(existing.scopes or []) != scopes:
                raise KeyBootstrapError(
                    f"this key is already registered for owner {existing.owner!r} with scopes "
                    f"{sorted(existing.scopes or [])}; revoke it (lambdahat keys revoke {existing.prefix}) "
                    "or use another key")
            session.expunge(existing)
            return existing, False
        row = ApiKey(owner=owner, name=name, prefix=plaintext[:10], key_hash=digest, scopes=scopes)
        session.add(row)
        session.flush()
        session.expunge(row)
        return row, True
