"""``lambdahat keys create|list|revoke|ensure``: manage API keys directly in the deployment's database.

They act on the database named by the settings (``LAMBDAHAT_DATABASE_URL``, default the SQLite file
in the data dir); on SQLite the schema is created first, so they work on a fresh data dir.
``create`` prints the new key as the LAST line of stdout (only its hash is stored).

``ensure`` registers a key whose plaintext an operator provides (a deployment secret).
``lambdahat serve --host 0.0.0.0`` refuses to start until a key other than the server's local one
exists (``ops/serve.py``). In a container deployment that key comes from a secret file: ``ensure``
stores its hash (never the key) with the given name, owner and scopes, and does nothing when the same
key is already registered, so it can run at every start (the compose ``api-key`` service does).
"""

from __future__ import annotations

import string
from pathlib import Path

import typer
from sqlalchemy import select

from api.auth import keys
from api.auth.keys import SCOPES, hash_key
from backend.db import session_scope
from backend.migrate import prepare_embedded_database
from backend.models import ApiKey
from backend.settings import Settings, get_settings


def create_key_cli(name: str, owner: str | None = None, scopes: list[str] | None = None, settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if name == "local" and (owner or name) == "local":
        typer.echo("error: the name 'local' with owner 'local' is reserved for the key `lambdahat serve` "
                   "writes to the data dir; choose another name", err=True)
        raise typer.Exit(2)
    prepare_embedded_database(settings)
    try:
        with session_scope(settings) as session:
            row, plaintext = keys.create_key(session, name=name, owner=owner, scopes=scopes or [])
            summary = f"created key {row.id} (prefix {row.prefix}) for owner {row.owner!r}, scopes: {', '.join(row.scopes) or 'none'}"
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(summary)
    typer.echo("store it now; it is not shown again. Use it as: Authorization: Bearer <key>")
    typer.echo(plaintext)
    return plaintext


def list_keys_cli(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    prepare_embedded_database(settings)
    with session_scope(settings) as session:
        rows = keys.list_keys(session)
        lines = [
            f"{r.id}  {r.prefix:<10}  owner={r.owner}  name={r.name}  scopes={','.join(r.scopes) or '-'}  "
            f"created={r.created_at:%Y-%m-%d %H:%M}  {'REVOKED ' + f'{r.revoked_at:%Y-%m-%d %H:%M}' if r.revoked_at else 'active'}"
            for r in rows
        ]
    if not lines:
        typer.echo("no keys (create one with: lambdahat keys create --name NAME)")
    for line in lines:
        typer.echo(line)


def revoke_key_cli(key: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    prepare_embedded_database(settings)
    with session_scope(settings) as session:
        row = keys.revoke_key(session, key)
        if row is None:
            typer.echo(f"error: no key with id or prefix {key!r} (see: lambdahat keys list)", err=True)
            raise typer.Exit(1)
        message = f"revoked key {row.id} (prefix {row.prefix}, owner {row.owner!r})"
    typer.echo(message)


# -- keys ensure: a key from a secret file ---------------------------------------------------

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
    prepare_embedded_database(settings)
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
