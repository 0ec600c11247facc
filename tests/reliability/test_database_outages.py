"""PostgreSQL connections dropped under a running service (``pg_terminate_backend`` on a dedicated test
database), and a database that does not answer at all.

- The API's pooled connections are killed between requests: the next requests succeed (pool_pre_ping).
- Every connection of the job's database is killed repeatedly while a job runs: heartbeats retry, the
  job finishes with exactly num_chains x num_draws stored draws and no duplicate or half-written rows.
- A database that is down answers 503 with a JSON message (not a 500 traceback), and nothing is stored.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine, func, select, text

from backend.db import session_scope
from backend.models import Job, JobChain, TraceChunk
from tests.jobs.test_runner import CONFIG, submit
from worker.runner import run_job

pytestmark = pytest.mark.postgres


@pytest.fixture
def database_url(postgres_url):  # noqa: ANN001 - connection drops are a PostgreSQL matter
    return postgres_url


def terminate_connections(database_url: str) -> int:
    """Kill every server process connected to the test database (as an admin restart or failover does)."""
    from tests.conftest import PG_ADMIN_URL

    name = database_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name}).all())
    finally:
        admin.dispose()


def test_api_requests_survive_dropped_connections(api, seeded):  # noqa: ANN001
    job_id = submit(api, seeded)
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200  # the pool now holds open connections
    for _ in range(3):
        assert terminate_connections(api.settings.database_url) >= 1
        # Reads and writes right after the drop: the pool notices the dead connection and reconnects.
        assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        assert api.get("/v1/jobs").status_code == 200
        assert api.get(f"/v1/checkpoints/{seeded.checkpoint_id}").status_code == 200
        assert submit(api, seeded)
    with session_scope(api.settings) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 4


def test_a_running_job_survives_connections_dropped_repeatedly(api, seeded):  # noqa: ANN001
    api.settings.heartbeat_interval = 0.1
    # Long enough that dropping connections every 0.1 s hits it several times even on a fast, idle machine.
    config = {**CONFIG, "num_draws": 30_000}
    job_id = submit(api, seeded, config=config)
    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.append(run_job(job_id, settings=api.settings)))
    runner.start()
    killed = 0
    while runner.is_alive():  # drop every connection ten times a second until the job ends
        killed += terminate_connections(api.settings.database_url)
        time.sleep(0.1)
    runner.join()
    assert killed >= 3, "the job ended before its connections were dropped: make it longer"
    assert outcome[0].status == "succeeded", outcome

    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["attempts"], job["draws_done"]) == ("succeeded", 1, 30_000)
    with session_scope(api.settings) as session:
        chains = session.scalars(select(JobChain).where(JobChain.job_id == job_id)).all()
        assert sorted(c.chain for c in chains) == [0, 1] and all(c.num_draws == 30_000 for c in chains)
        # Every series of every chain covers draws 0..9999 exactly once: no duplicate or missing chunk.
        chunks = session.execute(select(TraceChunk.chain, TraceChunk.series, TraceChunk.start_draw,
                                        TraceChunk.num_draws).where(TraceChunk.job_id == job_id)).all()
    covered: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for chain, series, start, n in chunks:
        covered.setdefault((chain, series), []).append((start, n))
    for key, spans in covered.items():
        spans.sort()
        assert spans[0][0] == 0 and sum(n for _, n in spans) == 30_000, key
        assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:], strict=False)), key
    traces = api.get(f"/v1/jobs/{job_id}/traces").json()
    assert (traces["num_chains"], traces["num_draws"]) == (2, 30_000)


def test_a_database_that_is_down_answers_503_with_json(tmp_path):  # noqa: ANN001
    from fastapi.testclient import TestClient

    from api.app import create_app
    from backend.settings import Settings

    # Nothing listens on port 1: every connection attempt is refused.
    settings = Settings(data_dir=tmp_path / "data", database_url="postgresql+psycopg://postgres@127.0.0.1:1/none")
    client = TestClient(create_app(settings, run_dispatcher=False), raise_server_exceptions=False,
                        headers={"Authorization": "Bearer lh_not-checked-before-the-database"})
    for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/datasets"), ("POST", "/v1/jobs")):
        response = client.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 503, (path, response.status_code, response.text)
        assert "database" in response.json()["detail"].lower()
        assert response.headers.get("retry-after")
    assert client.get("/readyz").status_code == 503
