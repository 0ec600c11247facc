"""The ``lambdahat`` command.

Server-side commands (serve, worker, db, keys, demo) import their implementation lazily, so the
client commands stay light and the client SDK never imports server code.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="lambdahat: local learning coefficient estimation for PyTorch checkpoints.", no_args_is_help=True)
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
    from api.server import run_server

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
    from api.migrate import upgrade

    upgrade(revision=revision)
    typer.echo(f"database upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()]) -> None:
    """Revert migrations down to REVISION ('base' for an empty database)."""
    from api.migrate import downgrade

    downgrade(revision=revision)
    typer.echo(f"database downgraded to {revision}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")],
    owner: Annotated[str | None, typer.Option(help="Owner the key acts for (default: NAME).")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="Extra scope: admin, run-code. Repeatable.")] = None,
) -> None:
    """Create an API key and print it as the last line (only its hash is stored)."""
    from api.admin import create_key_cli

    create_key_cli(name=name, owner=owner, scopes=scope or [])


@keys_app.command("list")
def keys_list() -> None:
    """List keys (prefix, owner, scopes, state); never the keys themselves."""
    from api.admin import list_keys_cli

    list_keys_cli()


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or prefix.")]) -> None:
    """Revoke a key: requests with it answer 401 from now on."""
    from api.admin import revoke_key_cli

    revoke_key_cli(key)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port for the embedded service.")] = 8765,
) -> None:
    """Train a small model on real data, score its checkpoints through the embedded service, print λ̂ over training."""
    from worker.demo import run_demo

    run_demo(port=port)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
