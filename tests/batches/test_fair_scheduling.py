"""Fair scheduling: one owner's big batch does not starve another owner's single job.

The selection (``lifecycle.fair_queued_job_ids`` / ``claim_next_fair``) on both databases, then with
real processes: an embedded ``lambdahat serve``, and a Celery deployment (Redis, PostgreSQL, a
``lambdahat worker``) where each broker message is a "run the next fair job" token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backend import lifecycle
from backend.db import session_scope
from backend.models import Job
from tests.batches.conftest import FAST_CONFIG, seed_collection
from tests.helpers import create_key, migrate
from tests.jobs.processes import Proc, Server, base_env, wait_for, wait_job
from tests.jobs.seed import seed_artifacts


def queue_jobs(settings, owner: str, count: int, start: datetime) -> list[str]:  # noqa: ANN001
    seeded = seed_artifacts(settings, owner)
    with session_scope(settings) as session:
        jobs = [Job(owner=owner, checkpoint_id=seeded.checkpoint_id, dataset_id=seeded.dataset_id,
                    loss="cross_entropy", config={}, queued_at=start + timedelta(seconds=i),
                    created_at=start + timedelta(seconds=i)) for i in range(count)]
        session.add_all(jobs)
        session.flush()
        return [j.id for j in jobs]


def test_the_owner_with_fewer_running_jobs_goes_first(service_settings):  # noqa: ANN001
    t0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    alice = queue_jobs(service_settings, "alice", 30, t0)
    bob = queue_jobs(service_settings, "bob", 1, t0 + timedelta(minutes=5))  # queued after all of alice's
    carol = queue_jobs(service_settings, "carol", 2, t0 + timedelta(minutes=6))
    with session_scope(service_settings) as session:
        # Oldest first within an owner; round-robin across owners (never served: oldest waiting first).
        assert lifecycle.fair_queued_job_ids(session, limit=6) == [alice[0], bob[0], carol[0], alice[1], carol[1],
                                                                    alice[2]]
        assert lifecycle.claim_next_fair(session, "w1") == (alice[0], 1)
        # alice now has a job running: bob and carol go before her
        assert lifecycle.fair_queued_job_ids(session, limit=3) == [bob[0], carol[0], alice[1]]
        assert lifecycle.claim_next_fair(session, "w2") == (bob[0], 1)
        assert lifecycle.claim_next_fair(session, "w3") == (carol[0], 1)
        # each has one running: alice, served least recently, is next; excluded ids are skipped
        assert lifecycle.fair_queued_job_ids(session, limit=2, exclude=[alice[1]]) == [alice[2], carol[1]]
    with session_scope(service_settings) as session:
        assert lifecycle.fair_queued_job_ids(session, limit=100).__len__() == 29 + 1
        assert session.get(Job, bob[0]).status == "running"


def _two_owners(settings, data_dir) -> tuple[dict, dict]:  # noqa: ANN001
    """alice: a dataset and a 30-checkpoint collection; bob: a dataset and one checkpoint; a key each."""
    alice = {"key": create_key(settings, "alice", owner="alice"), "data": seed_artifacts(settings, "alice")}
    seed_collection(settings, "alice", "big-run", list(range(30)))
    bob = {"key": create_key(settings, "bob", owner="bob"), "data": seed_artifacts(settings, "bob", seed=7)}
    return alice, bob


def _check_bob_is_not_starved(server: Server, alice: dict, bob: dict) -> None:
    import httpx

    as_alice = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {alice['key']}"}, timeout=30)
    as_bob = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {bob['key']}"}, timeout=30)
    try:
        batch = as_alice.post("/v1/batches", json={"dataset_id": alice["data"].dataset_id, "loss": "cross_entropy",
                                                   "config": FAST_CONFIG, "collection": "big-run"})
        assert batch.status_code == 202, batch.text
        job = as_bob.post("/v1/jobs", json={"checkpoint_id": bob["data"].checkpoint_id, "loss": "cross_entropy",
                                            "dataset_id": bob["data"].dataset_id, "config": FAST_CONFIG})
        assert job.status_code == 202, job.text
        done = wait_job(as_bob, job.json()["id"], timeout=120)
        assert done["status"] == "succeeded", (done, server.log())
        as_alice.post(f"/v1/batches/{batch.json()['id']}/cancel")
        bob_started = datetime.fromisoformat(done["timings"]["started_at"])
        alice_jobs = as_alice.get("/v1/jobs", params={"limit": 100}).json()["items"]
        assert len(alice_jobs) == 30
        started_before = [j for j in alice_jobs if j["timings"]["started_at"]
                          and datetime.fromisoformat(j["timings"]["started_at"]) < bob_started]
        # one worker slot: alice's first job may already run when bob submits; bob's job is next
        assert len(started_before) <= 2, [j["timings"]["started_at"] for j in started_before]
    finally:
        as_alice.close()
        as_bob.close()


@pytest.mark.slow
def test_embedded_server_runs_another_owners_job_before_most_of_a_big_batch(tmp_path):  # noqa: ANN001
    from backend.settings import Settings

    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir}/lambdahat.db")
    data_dir.mkdir()
    migrate(settings)
    alice, bob = _two_owners(settings, data_dir)
    server = Server(data_dir, base_env(data_dir, database_url=settings.database_url, heartbeat_interval=0.5),
                    tmp_path / "server.log")
    try:
        _check_bob_is_not_starved(server, alice, bob)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_celery_worker_runs_another_owners_job_before_most_of_a_big_batch(tmp_path, postgres_url):  # noqa: ANN001
    import uuid

    import redis

    from backend.settings import Settings

    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, database_url=postgres_url)
    migrate(settings)
    alice, bob = _two_owners(settings, data_dir)
    queue = f"lh-fair-{uuid.uuid4().hex[:10]}"
    broker_url = "redis://127.0.0.1:6379/12"
    env = base_env(data_dir, database_url=postgres_url, broker_url=broker_url, queue=queue, heartbeat_interval=0.5)
    processes: list[Proc] = []
    try:
        server = Server(data_dir, env, tmp_path / "server.log")
        processes.append(server)
        worker = Proc(["worker", "--name", "w1", "--queues", queue], env, tmp_path / "w1.log")
        processes.append(worker)
        wait_for(lambda: "ready." in worker.log(20_000) or not worker.alive(), 60, "the worker to be ready")
        assert worker.alive(), worker.log()
        _check_bob_is_not_starved(server, alice, bob)
    finally:
        for proc in reversed(processes):
            proc.stop(timeout=10)
        redis.Redis.from_url(broker_url).delete(queue)

