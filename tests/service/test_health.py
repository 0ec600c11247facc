"""/healthz and /readyz: readiness reports an unreachable database or broker as 503, naming it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.app import create_app
from backend.settings import Settings


def test_ready_when_the_database_answers(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "embedded"}}


def test_not_ready_when_database_and_broker_are_down(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/none",
                        broker_url="redis://127.0.0.1:1/0")
    client = TestClient(create_app(settings, run_dispatcher=False))  # no lifespan: nothing to start
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"].startswith("unreachable") and checks["broker"].startswith("unreachable")
