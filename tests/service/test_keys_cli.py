"""``lambdahat keys create|list|revoke`` as real subprocesses, against SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

from fastapi.testclient import TestClient


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=check)


def test_keys_create_list_revoke(tmp_path, database_url):
    from api.app import create_app
    from backend.settings import Settings

    data_dir = tmp_path / "data"  # fresh: on SQLite the CLI creates and migrates it
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAHAT_")}
    env.update(LAMBDAHAT_DATA_DIR=str(data_dir), LAMBDAHAT_DATABASE_URL=database_url)
    if not database_url.startswith("sqlite"):
        _cli(env, "db", "upgrade")

    created = _cli(env, "keys", "create", "--name", "ci-bot", "--owner", "team-a", "--scope", "run-code")
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("lh_") and len(key) > 40
    assert "team-a" in created.stdout and "run-code" in created.stdout

    settings = Settings(data_dir=data_dir, database_url=database_url)
    client = TestClient(create_app(settings, run_dispatcher=False), headers={"Authorization": f"Bearer {key}"})
    assert client.get("/v1/datasets").status_code == 200

    listing = _cli(env, "keys", "list").stdout
    assert "ci-bot" in listing and "owner=team-a" in listing and key[:10] in listing and "active" in listing
    assert key not in listing  # only the prefix is ever shown

    revoked = _cli(env, "keys", "revoke", key[:10])
    assert "revoked" in revoked.stdout
    assert client.get("/v1/datasets").status_code == 401
    assert "REVOKED" in _cli(env, "keys", "list").stdout

    unknown_scope = _cli(env, "keys", "create", "--name", "x", "--scope", "root", check=False)
    assert unknown_scope.returncode != 0 and "unknown scope" in unknown_scope.stderr
    missing = _cli(env, "keys", "revoke", "lh_nope", check=False)
    assert missing.returncode == 1 and "no key with id or prefix" in missing.stderr
