"""Distributed mode with real processes: a PostgreSQL database, a Redis server started by the test on its
own port (so it can be restarted without touching the shared Redis on 6379), ``lambdahat serve`` and
``lambdahat worker`` processes.

- Redis is killed and restarted empty (no persistence: every waiting and unacknowledged message is
  gone) while one job runs and two wait, and a job is submitted while Redis is down: every job
  succeeds, each exactly once (the reaper re-enqueues from the database, which is the record).
- The worker's pool process is SIGKILLed mid-job, as the kernel's OOM killer does: the worker itself
  survives (Celery's prefork pool starts a new process), and the job is re-claimed and succeeds.
- The API server is restarted (SIGKILL) in distributed mode while jobs run and wait: nothing is lost.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.jobs.processes import Deployment, free_port, submit, upload, wait_for, wait_job, write_artifacts

pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")]

class RedisServer:
    """A throw-away redis-server without persistence: a restart loses everything, as in the worst case."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port)
        wait_for(lambda: _pings(client), 20, f"redis-server on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def llen(self, queue: str) -> int:
        import redis

        return redis.Redis(port=self.port).llen(queue)


def _pings(client) -> bool:  # noqa: ANN001
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def broker(tmp_path):  # noqa: ANN001, ANN201
    server = RedisServer(tmp_path)
    yield server
    server.kill()


@pytest.fixture
def deployment(tmp_path, postgres_url, broker):  # noqa: ANN001, ANN201
    made: list[Deployment] = []

    def make(**settings) -> Deployment:  # noqa: ANN003
        made.append(Deployment(tmp_path, postgres_url, broker.url, **settings))
        return made[-1]

    yield make
    for d in made:
        d.close()


@pytest.fixture
def artifacts(tmp_path):  # noqa: ANN001, ANN201
    return write_artifacts(tmp_path, seed=21)


def pool_processes(pid: int) -> list[int]:
    """The child processes of a Celery worker's main process (its prefork pool)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def test_redis_restarted_mid_run_and_with_jobs_queued_loses_no_job(deployment, broker, artifacts):  # noqa: ANN001
    d = deployment(heartbeat_interval=0.3, heartbeat_timeout=5)
    server = d.serve()
    worker = d.worker("worker-r")
    ids = upload(server.client, *artifacts)
    running = submit(server.client, *ids, seed=1, num_draws=20_000)  # long enough to be caught running
    wait_job(server.client, running, 120, until=lambda j: j["status"] == "running" and j["progress"] > 0)
    waiting = [submit(server.client, *ids, seed=seed) for seed in (2, 3)]
    assert broker.llen(d.queue) == 2  # the two waiting messages exist only in Redis now

    broker.kill()  # no persistence: the queue and the running job's unacknowledged message are gone
    # Submitting while the broker is down still records the job (the database is the record).
    during = submit(server.client, *ids, seed=4)
    time.sleep(1.0)
    broker.start()

    jobs = {job_id: wait_job(server.client, job_id, timeout=180) for job_id in [running, *waiting, during]}
    assert {j["status"] for j in jobs.values()} == {"succeeded"}, d.logs()
    assert jobs[running]["attempts"] == 1  # it kept running through the outage; its heartbeat is in the DB
    assert jobs[running]["draws_done"] == 20_000
    logs = worker.log(400_000)
    for job_id in jobs:  # each ran (and succeeded) exactly once
        assert len(re.findall(f"job {job_id} succeeded", logs)) == 1, d.logs()
    assert worker.alive()


def test_a_job_process_killed_like_oom_fails_over_and_the_worker_survives(deployment, artifacts):  # noqa: ANN001
    d = deployment(heartbeat_interval=0.3, heartbeat_timeout=5, max_attempts=2)
    server = d.serve()
    worker = d.worker("worker-o")
    ids = upload(server.client, *artifacts)
    job_id = submit(server.client, *ids, seed=5, num_draws=20_000)  # long enough to be caught running
    wait_job(server.client, job_id, 120, until=lambda j: j["status"] == "running" and j["progress"] > 0)
    [pool] = pool_processes(worker.pid)
    os.kill(pool, signal.SIGKILL)  # what the kernel's OOM killer does to the process that allocated
    job = wait_job(server.client, job_id, timeout=120)
    assert job["status"] == "succeeded", d.logs()
    assert (job["attempts"], job["worker"]) == (2, "worker-o")
    assert worker.alive()  # the worker's main process survived and started a new pool process
    assert pool_processes(worker.pid) and pool not in pool_processes(worker.pid)
    traces = server.client.get(f"/v1/jobs/{job_id}/traces").json()
    assert (traces["num_chains"], traces["num_draws"]) == (2, 20_000)

    # The same again with no attempts left: the job fails with a reason that names the likely cause.
    doomed = submit(server.client, *ids, seed=6, num_draws=100_000)
    wait_job(server.client, doomed, 120, until=lambda j: j["status"] == "running" and j["progress"] > 0)
    os.kill(pool_processes(worker.pid)[0], signal.SIGKILL)
    wait_job(server.client, doomed, 120, until=lambda j: j["attempts"] == 2 and j["status"] == "running"
             and j["progress"] > 0)
    os.kill(pool_processes(worker.pid)[0], signal.SIGKILL)
    failed = wait_job(server.client, doomed, timeout=60)
    assert failed["status"] == "failed" and "died 2 times" in failed["error"] and "out of memory" in failed["error"]
    assert worker.alive()
    # ... and the worker still runs the next job.
    assert wait_job(server.client, submit(server.client, *ids, seed=7), timeout=120)["status"] == "succeeded"


def test_api_restarted_in_distributed_mode_loses_nothing(deployment, artifacts):  # noqa: ANN001
    d = deployment(heartbeat_interval=0.3, heartbeat_timeout=5)
    server = d.serve("server1.log")
    d.worker("worker-s")
    ids = upload(server.client, *artifacts)
    running = submit(server.client, *ids, seed=8, num_draws=20_000)  # long enough to be caught running
    waiting = submit(server.client, *ids, seed=9)
    wait_job(server.client, running, 120, until=lambda j: j["status"] == "running" and j["progress"] > 0)
    server.kill_group()  # a crash of the API process: no graceful shutdown
    server.stop()

    server = d.serve("server2.log")
    for job_id in (running, waiting):
        job = wait_job(server.client, job_id, timeout=180)
        assert job["status"] == "succeeded" and job["attempts"] == 1, d.logs()
    assert server.client.get("/v1/jobs").json()["items"]
    traces = server.client.get(f"/v1/jobs/{running}/traces").json()
    assert traces["num_draws"] == 20_000
