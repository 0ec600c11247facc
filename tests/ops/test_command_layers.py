"""The command line's layers: the SDK's user commands import no server code, and the operator
commands (``ops/cli.py``) say what to install when the server parts are missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = ("api", "backend", "worker", "ops", "client", "fastapi", "sqlalchemy", "celery", "uvicorn", "psycopg", "alembic")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_sdk_and_its_commands_import_no_server_code():
    result = _python(
        f"""
        import sys
        import lambdahat, lambdahat.cli, lambdahat.cluster_status, lambdahat.serialize
        from lambdahat import Client, AsyncClient
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in {SERVER_PACKAGES!r})
        print(loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_reading_the_database_needs_the_operator_command_line():
    result = _python(
        """
        from lambdahat.cluster_status import cluster_status
        from lambdahat.errors import ServerError
        try:
            cluster_status(None, None, from_database=True)
        except ServerError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "needs the operator's command line" in result.stdout


def test_an_operator_command_without_the_server_parts_says_what_to_install():
    result = _python(
        """
        import sys
        sys.modules["uvicorn"] = None  # as if not installed: importing it raises ModuleNotFoundError
        sys.argv = ["lambdahat", "serve"]
        from ops.cli import main
        main()
        """
    )
    assert result.returncode == 2, result.stderr
    assert "pip install 'lambdahat[server]'" in result.stderr and "uvicorn is missing" in result.stderr
