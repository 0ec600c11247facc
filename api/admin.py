"""``lambdahat keys create|list|revoke``: manage API keys directly in the configured database.

They act on the database named by the settings (``LAMBDAHAT_DATABASE_URL``, default the SQLite file
in the data dir); on SQLite the migrations are applied first, so they work on a fresh data dir.
``create`` prints the new key as the LAST line of stdout (only its hash is stored).
"""

from __future__ import annotations

import typer

from api.auth import keys
from backend.db import session_scope
from backend.settings import Settings, get_settings


def _prepare(settings: Settings) -> None:
    if settings.is_sqlite:
        from backend.migrate import upgrade

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings)


def create_key_cli(name: str, owner: str | None = None, scopes: list[str] | None = None, settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if name == "local" and (owner or name) == "local":
        typer.echo("error: the name 'local' with owner 'local' is reserved for the key `lambdahat serve` "
                   "writes to the data dir; choose another name", err=True)
        raise typer.Exit(2)
    _prepare(settings)
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
    _prepare(settings)
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
    _prepare(settings)
    with session_scope(settings) as session:
        row = keys.revoke_key(session, key)
        if row is None:
            typer.echo(f"error: no key with id or prefix {key!r} (see: lambdahat keys list)", err=True)
            raise typer.Exit(1)
        message = f"revoked key {row.id} (prefix {row.prefix}, owner {row.owner!r})"
    typer.echo(message)
