"""The client against a distributed deployment: ``lambdahat serve`` with PostgreSQL and Redis, and a
separate ``lambdahat worker`` process that runs the job (Celery)."""

from __future__ import annotations

import subprocess
import time
import uuid

import numpy as np
import pytest
import redis

from lambdahat import Client
from tests.client.conftest import lambdahat_command, process_env, start_process, start_server, stop_process
from tests.client.helpers import FAST_CONFIG, classification_data, mlp

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

REDIS_URL = "redis://127.0.0.1:6379/12"  # a Redis db number kept for these tests; each test has its own queue


def test_client_drives_a_job_run_by_a_celery_worker(tmp_path, postgres_url):
    queue = f"lh-client-{uuid.uuid4().hex[:10]}"
    settings = {"LAMBDAHAT_DATABASE_URL": postgres_url, "LAMBDAHAT_BROKER_URL": REDIS_URL, "LAMBDAHAT_QUEUE": queue}
    data_dir = tmp_path / "data"
    env = process_env(data_dir, **settings)
    migrated = subprocess.run(
        [*lambdahat_command(), "db", "upgrade"], env=env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr

    processes = []
    try:
        server, url = start_server(data_dir, tmp_path / "server.log", **settings)
        processes.append(server)
        worker_log = tmp_path / "worker.log"
        processes.append(start_process(["worker", "--name", "client-test-worker", "--queues", queue], env, worker_log))
        deadline = time.monotonic() + 90
        while "ready." not in worker_log.read_text(errors="replace") and time.monotonic() < deadline:
            assert processes[-1].poll() is None, worker_log.read_text(errors="replace")
            time.sleep(0.3)

        with Client(url, api_key=(data_dir / "api_key").read_text().strip()) as cl:
            dataset = cl.upload_dataset(classification_data(seed=21))
            checkpoint = cl.upload_checkpoint(mlp(seed=21), collection="distributed", step=1)
            job = cl.wait(cl.submit(checkpoint, dataset, loss="cross_entropy", config=FAST_CONFIG),
                          progress=False, timeout=180, poll=0.3)
            logs = (tmp_path / "server.log").read_text(errors="replace") + worker_log.read_text(errors="replace")
            assert job.status == "succeeded", f"{job.error}\n{logs[-4000:]}"
            assert job.worker == "client-test-worker"
            traces = cl.traces(job)
            assert traces["loss"].shape == (2, FAST_CONFIG["num_draws"]) and np.isfinite(traces["llc"]).all()
            (row,) = cl.results(job)
            assert row["step"] == 1 and row["llc_mean"] == pytest.approx(job.result.llc_mean)
    finally:
        for process in reversed(processes):
            stop_process(process)
        redis.Redis.from_url(REDIS_URL).delete(queue)
