"""``GET /v1/status`` and ``lambdahat status`` (as a subprocess): embedded mode in-process, and a real
distributed deployment (PostgreSQL, Redis, ``lambdahat serve`` and a ``lambdahat worker``) where the
worker is seen alive through its registry heartbeats and a Celery ping, a running job shows its
progress, and the worker's JSON logs carry the job id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.db import session_scope
from backend.models import Job
from tests.helpers import api, create_key, make_api, serve_in_thread, service_settings  # noqa: F401 - fixtures
from tests.jobs.seed import seed_artifacts

ROOT = Path(__file__).resolve().parents[2]


def lambdahat(*args: str, url: str, key: str, timeout: float = 60,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAHAT_")}
    env.update(LAMBDAHAT_URL=url, LAMBDAHAT_API_KEY=key, PYTHONPATH=str(ROOT), COLUMNS="200", **extra)
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def add_running_job(settings, owner: str, worker: str, progress: float) -> str:  # noqa: ANN001
    seeded = seed_artifacts(settings, owner)
    now = datetime.now(UTC)
    job = Job(owner=owner, checkpoint_id=seeded.checkpoint_id, dataset_id=seeded.dataset_id, loss="mse",
              config={"num_draws": 500}, status="running", worker=worker, attempts=1, progress=progress,
              draws_done=int(500 * progress), started_at=now - timedelta(seconds=30), heartbeat_at=now)
    with session_scope(settings) as session:
        session.add(job)
        session.flush()
        return job.id


@pytest.fixture
def database_url(sqlite_url):  # noqa: ANN001 - the summary's SQL is shared with /metrics, tested on both databases there
    return sqlite_url


def test_status_lists_own_running_jobs_and_admins_see_all(make_api) -> None:  # noqa: ANN001, F811
    alice = make_api("alice")
    admin = make_api("ops", scopes=("admin",))
    mine = add_running_job(alice.settings, "alice", "gpu0", 0.25)
    theirs = add_running_job(alice.settings, "bob", "gpu1", 0.5)
    with session_scope(alice.settings) as session:
        session.add(Job(owner="bob", checkpoint_id=session.get(Job, theirs).checkpoint_id,
                        dataset_id=session.get(Job, theirs).dataset_id, loss="mse", config={}, status="queued"))

    for_alice = alice.get("/v1/status").json()
    assert for_alice["jobs"] == {"queued": 1, "running": 2, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert for_alice["queue"]["depth"] == 1 and for_alice["mode"] == "embedded"
    assert for_alice["running_scope"] == "own"
    assert [(r["id"], r["worker"], r["progress"], r["draws_done"], r["num_draws"]) for r in for_alice["running"]] == \
        [(mine, "gpu0", 0.25, 125, 500)]
    assert "owner" not in for_alice["running"][0] and "bob" not in json.dumps(for_alice)
    # Workers seen through their jobs' heartbeats: both beat just now.
    assert {(w["name"], w["state"], w["source"]) for w in for_alice["workers"]["items"]} == \
        {("gpu0", "alive", "jobs"), ("gpu1", "alive", "jobs")}

    for_admin = admin.get("/v1/status").json()
    assert for_admin["running_scope"] == "all"
    assert {(r["id"], r["owner"]) for r in for_admin["running"]} == {(mine, "alice"), (theirs, "bob")}
    assert alice.get("/v1/status", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert alice.get("/v1/status", params={"ping_timeout": 0}).status_code == 422


def test_lambdahat_status_subprocess_against_an_embedded_server(service_settings) -> None:  # noqa: ANN001, F811
    key = create_key(service_settings, "ops", owner="ops", scopes=["admin"])
    running = add_running_job(service_settings, "ops", "embedded", 0.4)
    with serve_in_thread(service_settings, run_dispatcher=False) as url:
        table = lambdahat("status", url=url, key=key)
        assert table.returncode == 0, table.stderr
        for text in ("mode", "embedded", "queue depth", "running 1", running, "40%", "workers alive"):
            assert text in table.stdout, (text, table.stdout)

        as_json = lambdahat("status", "--format", "json", url=url, key=key)
        assert as_json.returncode == 0, as_json.stderr
        status = json.loads(as_json.stdout)
        assert status["jobs"]["running"] == 1 and status["running"][0]["id"] == running
        assert status["embedded"] == {"dispatcher_running": False, "max_concurrent_jobs": 1, "running_job_ids": []}

        as_csv = lambdahat("status", "--format", "csv", url=url, key=key)
        header, row = as_csv.stdout.strip().splitlines()
        assert dict(zip(header.split(","), row.split(","), strict=True))["jobs_running"] == "1"

        one_job = lambdahat("status", running, "--format", "json", url=url, key=key)  # with an id: that job
        assert one_job.returncode == 0 and json.loads(one_job.stdout)["id"] == running

        assert lambdahat("status", url=url, key="lh_wrong").returncode == 5  # documented: auth error
    unreachable = lambdahat("status", url="http://127.0.0.1:9", key=key, timeout=60)
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr

    # Operators can read the database of their settings directly (no server, no key needed).
    direct = lambdahat("status", "--from-database", "--format", "json", url="http://127.0.0.1:9", key="",
                       env={"LAMBDAHAT_DATABASE_URL": service_settings.database_url,
                            "LAMBDAHAT_DATA_DIR": str(service_settings.data_dir)})
    assert direct.returncode == 0, direct.stderr
    from_db = json.loads(direct.stdout)
    assert from_db["source"] == "database" and from_db["running"][0]["id"] == running
    assert from_db["running"][0]["owner"] == "ops" and from_db["embedded"]["dispatcher_running"] is None


def test_without_a_server_address_status_falls_back_to_the_database(service_settings, monkeypatch) -> None:  # noqa: ANN001, F811
    import lambdahat._http
    import ops.cli  # noqa: F401 - `lambdahat status` runs through it: it installs the database reader
    from backend.settings import get_settings
    from lambdahat.cluster_status import cluster_status
    from lambdahat.errors import ConnectionFailed
    from tests.helpers import free_port

    running = add_running_job(service_settings, "ops", "gpu0", 0.5)
    monkeypatch.setattr(lambdahat._http, "DEFAULT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.delenv("LAMBDAHAT_URL", raising=False)
    monkeypatch.setenv("LAMBDAHAT_DATABASE_URL", service_settings.database_url)
    monkeypatch.setenv("LAMBDAHAT_DATA_DIR", str(service_settings.data_dir))
    get_settings.cache_clear()
    try:
        summary = cluster_status(None, "lh_unused")
        assert summary["source"] == "database" and [r["id"] for r in summary["running"]] == [running]
        with pytest.raises(ConnectionFailed):  # an address that was asked for is never silently replaced
            cluster_status(lambdahat._http.DEFAULT_URL, "lh_unused")
    finally:
        get_settings.cache_clear()


# -- distributed, for real -----------------------------------------------------------------------------------

CONFIG = {"num_chains": 1, "num_burnin_steps": 0, "epsilon": 1e-4, "gamma": 100.0, "batch_size": 16, "seed": 0,
          "device": "cpu"}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_status_of_a_distributed_deployment(tmp_path, postgres_url) -> None:  # noqa: ANN001
    import redis

    from backend.settings import Settings
    from backend.workers import registry_key
    from tests.helpers import migrate, random_state_dict, write_safetensors
    from tests.jobs.processes import Proc, Server, base_env, upload, wait_for, wait_job
    from tests.jobs.seed import CLASSIFIER, classification_data

    broker_url = "redis://127.0.0.1:6379/13"
    queue = f"lh-ops-{uuid.uuid4().hex[:10]}"
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, database_url=postgres_url)
    migrate(settings)
    env = base_env(data_dir, database_url=postgres_url, broker_url=broker_url, queue=queue, log_format="json",
                   heartbeat_interval=0.5)
    key = create_key(settings, "ops-admin", owner="ops", scopes=["admin"])
    processes: list[Proc] = []
    try:
        server = Server(data_dir, env, tmp_path / "server.log")
        processes.append(server)
        server.client.headers["Authorization"] = f"Bearer {key}"
        worker = Proc(["worker", "--name", "ops-w1", "--queues", f"{queue},ops-w1-own"], env, tmp_path / "worker.log")
        processes.append(worker)

        def status() -> dict:
            result = lambdahat("status", "--format", "json", url=server.url, key=key)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        def worker_entry(current: dict) -> dict | None:
            return next((w for w in current["workers"]["items"] if w["name"] == "ops-w1"), None)

        # Idle, the worker is alive through its registry heartbeats (no job has run yet).
        entry = wait_for(lambda: (lambda w: w if w and w["alive"] else None)(worker_entry(status())), 60,
                         "the worker in the registry")
        assert entry["source"] == "registry" and entry["queues"] == [queue, "ops-w1-own"] and entry["pid"]
        pinged = json.loads(lambdahat("status", "--ping", "--format", "json", url=server.url, key=key).stdout)
        assert any(host.startswith("ops-w1@") for host in pinged["broker"]["ping"]), pinged["broker"]

        x, y = classification_data(64, 4, 3, 0)
        checkpoint_id, dataset_id = upload(server.client, write_safetensors(tmp_path / "m.safetensors",
                                                                            random_state_dict(CLASSIFIER, 0)),
                                           write_safetensors(tmp_path / "d.safetensors", {"x": x, "y": y}), CLASSIFIER)

        def submit(num_draws: int) -> str:
            response = server.client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id, "dataset_id": dataset_id,
                                                            "loss": "cross_entropy",
                                                            "config": dict(CONFIG, num_draws=num_draws)})
            assert response.status_code == 202, response.text
            return response.json()["id"]

        # A long job: `lambdahat status` shows it running on ops-w1 with progress; then it is cancelled.
        long_job = submit(100_000)
        seen = wait_for(lambda: next((r for r in status()["running"] if r["id"] == long_job and r["progress"] > 0),
                                     None), 90, "the long job running with progress")
        assert seen["worker"] == "ops-w1" and seen["owner"] == "ops" and seen["num_draws"] == 100_000
        table = lambdahat("status", url=server.url, key=key)
        assert "ops-w1" in table.stdout and long_job in table.stdout and "alive" in table.stdout, table.stdout
        assert server.client.post(f"/v1/jobs/{long_job}/cancel").status_code == 200
        assert wait_job(server.client, long_job, 60)["status"] == "cancelled"

        short_job = submit(30)
        assert wait_job(server.client, short_job, 90)["status"] == "succeeded"
        final = status()
        assert final["jobs"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 1}
        assert final["broker"]["registry"] == "ok" and final["stale_running"] == 0

        # The worker wrote JSON only; the job's records carry its id and the worker's name.
        records = [json.loads(line) for line in worker.log(10**7).splitlines() if line.strip()]
        job_records = [r for r in records if r.get("job_id") == short_job]
        assert any("claimed by ops-w1" in r["message"] for r in job_records), records[-20:]
        assert all(r["worker"] == "ops-w1" for r in job_records)
        assert any(r["logger"] == "lambdahat.runner" and "succeeded" in r["message"] for r in job_records)

        # A clean stop marks the registry entry stopped.
        worker.stop(timeout=30)
        stopped = wait_for(lambda: (lambda w: w if w and w["state"] == "stopped" else None)(worker_entry(status())),
                           30, "the worker marked stopped")
        assert stopped["alive"] is False
    except BaseException:
        for proc in processes:
            print(f"--- {proc.log_path.name}\n{proc.log()}")
        raise
    finally:
        for proc in reversed(processes):
            proc.stop(timeout=15)
        client = redis.Redis.from_url(broker_url)
        client.delete(registry_key(queue), queue, "ops-w1-own", *[f"{queue}\x06\x16{p}" for p in (3, 6, 9)])

