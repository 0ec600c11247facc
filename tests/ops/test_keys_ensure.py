"""``lambdahat keys ensure --key-file``: the compose deployment's way to give ``serve --host 0.0.0.0``
the explicit key it requires, from a secret file, idempotently."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from ops.serve import ServerConfigError, prepare
from tests.helpers import api_client, running_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def database_url(sqlite_url):  # noqa: ANN001
    return sqlite_url


def ensure(settings, *args: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAHAT_")}
    env.update(LAMBDAHAT_DATA_DIR=str(settings.data_dir), LAMBDAHAT_DATABASE_URL=settings.database_url,
               PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ops.cli", "keys", "ensure", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_ensure_registers_a_secret_key_once_and_unlocks_the_public_bind(settings, tmp_path) -> None:  # noqa: ANN001
    secret = tmp_path / "admin_api_key"
    key = "lh_" + secrets.token_urlsafe(32)
    secret.write_text(key + "\n")
    with pytest.raises(ServerConfigError, match="refusing to bind 0.0.0.0"):
        prepare(settings, "0.0.0.0")  # a fresh deployment: only the server's local key

    first = ensure(settings, "--name", "admin", "--scope", "admin", "--key-file", str(secret))
    assert first.returncode == 0, first.stderr
    assert "registered for owner 'admin', scopes: admin" in first.stdout and key not in first.stdout
    again = ensure(settings, "--name", "admin", "--scope", "admin", "--key-file", str(secret))
    assert again.returncode == 0 and "already registered" in again.stdout

    prepare(settings, "0.0.0.0")  # now allowed
    with running_app(settings) as app:
        client = api_client(app, settings, key, "admin")
        assert client.get("/v1/status").json()["running_scope"] == "all"  # the admin scope took effect
        assert client.get("/v1/jobs").status_code == 200


@pytest.mark.parametrize(("content", "args", "message"), [
    ("short", [], "use at least 32 random characters"),
    ("lh_" + "x" * 40 + " spaced", [], "not allowed in an HTTP bearer token"),
    ("", [], "is empty"),
    (None, [], "cannot read the key file"),
    ("lh_" + "y" * 40, ["--scope", "superuser"], "unknown scope"),
])
def test_ensure_refuses_bad_keys_with_a_reason(settings, tmp_path, content, args, message) -> None:  # noqa: ANN001
    secret = tmp_path / "key"
    if content is not None:
        secret.write_text(content)
    result = ensure(settings, "--name", "admin", "--key-file", str(secret), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_ensure_refuses_a_revoked_or_differently_registered_key(settings, tmp_path) -> None:  # noqa: ANN001
    from api.auth.keys import revoke_key
    from backend.db import session_scope

    secret = tmp_path / "key"
    key = "lh_" + secrets.token_urlsafe(32)
    secret.write_text(key)
    assert ensure(settings, "--name", "ops", "--key-file", str(secret)).returncode == 0
    other_owner = ensure(settings, "--name", "ops", "--owner", "someone-else", "--key-file", str(secret))
    assert other_owner.returncode == 2 and "already registered for owner 'ops'" in other_owner.stderr
    with session_scope(settings) as session:
        revoke_key(session, key[:10])
    revoked = ensure(settings, "--name", "ops", "--key-file", str(secret))
    assert revoked.returncode == 2 and "was revoked" in revoked.stderr
