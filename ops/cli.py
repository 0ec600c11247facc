"""The ``lambdahat`` command: the SDK's user commands (``lambdahat/cli.py``) plus the operator's.

Operator commands run and administer a deployment on its own machine: ``serve`` (the API, and the
embedded job dispatcher), ``worker`` (a Celery worker), ``db`` (migrations), ``keys`` (API keys) and
``demo``. Each imports its server code when it runs, so ``lambdahat --help`` and the user commands
work with the SDK alone installed; an operator command then says what to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lambdahat import cluster_status
from lambdahat.cli import app

SERVER_PARTS_HINT = "the server parts are not installed: pip install 'lambdahat[server]'"

db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the API (and, in embedded mode, the local job dispatcher)."""
    from ops.serve import run_server

    run_server(host=host, port=port)


@app.command()
def worker(
    name: Annotated[str | None, typer.Option(help="Worker name, recorded on the jobs it runs.")] = None,
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume.")] = "lambdahat",
    device: Annotated[str | None, typer.Option(help="Device for jobs that ask for 'auto' (cpu, cuda, cuda:N).")] = None,
) -> None:
    """Run a Celery worker against LAMBDAHAT_BROKER_URL (prefork, one process, prefetch 1, acks late)."""
    from worker.celery_worker import run_worker

    run_worker(name=name, queues=queues, device=device)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default head)."""
    from backend.migrate import upgrade

    upgrade(revision=revision)
    typer.echo(f"database upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()]) -> None:
    """Revert migrations down to REVISION ('base' for an empty database)."""
    from backend.migrate import downgrade

    downgrade(revision=revision)
    typer.echo(f"database downgraded to {revision}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")],
    owner: Annotated[str | None, typer.Option(help="Owner the key acts for (default: NAME).")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="Extra scope: admin, run-code. Repeatable.")] = None,
) -> None:
    """Create an API key and print it as the last line (only its hash is stored)."""
    from ops.keys import create_key_cli

    create_key_cli(name=name, owner=owner, scopes=scope or [])


@keys_app.command("ensure")
def keys_ensure(
    name: Annotated[str, typer.Option(help="A label for the key.")],
    key_file: Annotated[Path, typer.Option(help="File holding the key (e.g. a container secret).")],
    owner: Annotated[str | None, typer.Option(help="Owner the key acts for (default: NAME).")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="Extra scope: admin, run-code. Repeatable.")] = None,
) -> None:
    """Register the key in KEY_FILE (its hash) unless it already is; for deployments (docs/deploy.md)."""
    from backend.settings import get_settings
    from ops.keys import KeyBootstrapError, ensure_key, read_key_file

    try:
        row, created = ensure_key(get_settings(), name=name, owner=owner, scopes=scope or [],
                                  plaintext=read_key_file(key_file))
    except KeyBootstrapError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    state = "registered" if created else "already registered"
    typer.echo(f"key {row.id} (prefix {row.prefix}) {state} for owner {row.owner!r}, scopes: {', '.join(row.scopes) or 'none'}")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (prefix, owner, scopes, state); never the keys themselves."""
    from ops.keys import list_keys_cli

    list_keys_cli()


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or prefix.")]) -> None:
    """Revoke a key: requests with it answer 401 from now on."""
    from ops.keys import revoke_key_cli

    revoke_key_cli(key)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port for the embedded service.")] = 8765,
) -> None:
    """Train a small model on real data, score its checkpoints through the embedded service, print λ̂ over training."""
    from worker.demo import run_demo

    run_demo(port=port)


def _read_local_database(ping: bool) -> dict[str, Any]:
    from backend.status import status_from_database

    return status_from_database(ping=ping)


# `lambdahat status --from-database` (and its fallback when no server answers) reads this machine's
# deployment database: an operator's view, so the reader comes from here, not from the SDK.
cluster_status.read_database = _read_local_database


def main() -> None:
    try:
        app()
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"fastapi", "sqlalchemy", "alembic", "celery", "uvicorn", "psycopg"}:
            typer.echo(f"error: {SERVER_PARTS_HINT} ({exc.name} is missing)", err=True)
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    main()
