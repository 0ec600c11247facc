"""Distributed mode for real: PostgreSQL, Redis, a ``lambdahat serve`` process and separate
``lambdahat worker`` processes (Celery prefork pools).

Each test uses its own PostgreSQL database, its own Redis queue name (on a Redis db number kept for
these tests) and its own data dir, so tests never see each other's messages or jobs.
"""

from __future__ import annotations

import re
import time

import pytest
import redis

from tests.jobs.processes import JOB_CONFIG, Deployment, submit, upload, wait_job, write_artifacts

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

REDIS_DB = 11


@pytest.fixture
def deployment(tmp_path, postgres_url):  # noqa: ANN001, ANN201
    deployments: list[Deployment] = []

    def make(**settings) -> Deployment:  # noqa: ANN003
        deployments.append(Deployment(tmp_path, postgres_url, f"redis://127.0.0.1:6379/{REDIS_DB}", **settings))
        return deployments[-1]

    yield make
    for d in deployments:
        d.close()


@pytest.fixture
def artifacts(tmp_path):  # noqa: ANN001, ANN201
    return write_artifacts(tmp_path, seed=9)


def test_two_workers_share_six_jobs(deployment, artifacts):  # noqa: ANN001
    d = deployment(heartbeat_interval=0.5)
    server = d.serve()
    workers = [d.worker("worker-a"), d.worker("worker-b")]
    try:
        ids = upload(server.client, *artifacts)
        job_ids = [submit(server.client, *ids, seed=seed) for seed in range(6)]
        jobs = [wait_job(server.client, job_id, timeout=180) for job_id in job_ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * 6, d.logs()
        assert {j["worker"] for j in jobs} == {"worker-a", "worker-b"}  # both workers were used
        assert all(j["attempts"] == 1 for j in jobs)
        # Every job ran (and succeeded) exactly once across both workers.
        logs = "".join(w.log(200_000) for w in workers)
        for job_id in job_ids:
            assert len(re.findall(f"job {job_id} succeeded", logs)) == 1
        # Same seed, same result, whichever worker ran it: resubmitting seed 0 reproduces job 0.
        again = wait_job(server.client, submit(server.client, *ids, seed=0), timeout=120)
        assert again["result"]["llc_mean"] == jobs[0]["result"]["llc_mean"]

        # Cancelling a running job on a worker stops it within seconds.
        long_job = submit(server.client, *ids, seed=7, num_draws=100_000)
        wait_job(server.client, long_job, 60, until=lambda j: j["status"] == "running" and j["progress"] > 0)
        asked = time.monotonic()
        server.client.post(f"/v1/jobs/{long_job}/cancel")
        cancelled = wait_job(server.client, long_job, 30)
        assert cancelled["status"] == "cancelled" and time.monotonic() - asked < 10
        assert all(w.alive() for w in workers)
    finally:
        d.close()


def test_a_killed_worker_job_is_reclaimed_and_finishes(deployment, artifacts):  # noqa: ANN001
    d = deployment(heartbeat_interval=0.3, heartbeat_timeout=3)
    server = d.serve()
    try:
        ids = upload(server.client, *artifacts)
        workers = {name: d.worker(name) for name in ("worker-1", "worker-2")}
        job_id = submit(server.client, *ids, seed=3, num_draws=20_000)  # long enough to be caught running
        running = wait_job(server.client, job_id, 60,
                           until=lambda j: j["status"] == "running" and j["progress"] > 0)
        doomed = running["worker"]
        rescuer_name = next(name for name in workers if name != doomed)
        rescuer = workers[rescuer_name]
        killed_at = time.monotonic()
        workers[doomed].kill_group()  # SIGKILL the worker and its pool process: no goodbye, no ack

        job = wait_job(server.client, job_id, timeout=120)
        assert job["status"] == "succeeded", d.logs()
        assert (job["attempts"], job["worker"]) == (2, rescuer_name)
        assert time.monotonic() - killed_at > 3  # only after the heartbeat went stale
        traces = server.client.get(f"/v1/jobs/{job_id}/traces").json()
        assert (traces["num_chains"], traces["num_draws"]) == (2, 20_000)
        assert all(len(row) == 20_000 for row in traces["loss"])
        assert rescuer.alive()
    finally:
        d.close()


def test_jobs_queued_when_redis_lost_its_queue_still_run(deployment, artifacts):  # noqa: ANN001
    d = deployment(heartbeat_interval=0.5, heartbeat_timeout=3)
    server = d.serve()
    try:
        ids = upload(server.client, *artifacts)
        job_ids = [submit(server.client, *ids, seed=seed) for seed in (11, 12)]
        broker = redis.Redis.from_url(d.broker_url)
        assert broker.llen(d.queue) == 2
        broker.delete(d.queue)  # what a Redis restart without persistence does to waiting messages
        d.worker("after-restart")
        jobs = [wait_job(server.client, job_id, timeout=120) for job_id in job_ids]
        assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], d.logs()
        assert all(j["attempts"] == 1 for j in jobs)
    finally:
        d.close()


def test_a_worker_pool_process_stays_warm_across_jobs_until_it_holds_too_much_memory(deployment, artifacts):  # noqa: ANN001
    """The Celery pool process warms up once and runs job after job; with a memory limit below what
    any process holds, Celery replaces it after every job, and every job still succeeds alike."""
    results = {}
    for limit in (None, 2**20):
        d = deployment(heartbeat_interval=0.5, job_process_max_rss_bytes=limit)
        server = d.serve(f"server-{limit}.log")
        worker = d.worker(f"warm-{limit}")
        try:
            ids = upload(server.client, *artifacts)
            jobs = []
            for seed in range(3):  # one at a time, so each job's process is the one left by the last
                response = server.client.post("/v1/jobs", json={  # force: not answered from the first round
                    "checkpoint_id": ids[0], "dataset_id": ids[1], "loss": "cross_entropy", "force": True,
                    "config": {**JOB_CONFIG, "seed": seed}})
                assert response.status_code == 202, response.text
                jobs.append(wait_job(server.client, response.json()["id"], timeout=120))
            assert [j["status"] for j in jobs] == ["succeeded"] * 3, d.logs()
            results[limit] = [j["result"]["llc_per_chain"] for j in jobs]
            processes = [(j["result"]["timings"]["job_process"]["pid"], j["result"]["timings"]["job_process"]["job_number"])
                         for j in jobs]
            if limit is None:
                assert len({pid for pid, _ in processes}) == 1 and [n for _, n in processes] == [1, 2, 3]
                assert "pool process warm after" in worker.log(200_000)
            else:
                assert len({pid for pid, _ in processes}) == 3 and all(n == 1 for _, n in processes)
        finally:
            d.close()
    assert results[None] == results[2**20]  # warm or fresh, the same numbers
