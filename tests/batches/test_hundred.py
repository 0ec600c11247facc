"""A 100-checkpoint batch run to completion on a Celery deployment (Redis, PostgreSQL, one
``lambdahat worker``): creation, fair tokens, listing, ordering and results at that size, in bounded time."""

from __future__ import annotations

import math
import time
import uuid

import httpx
import pytest

from tests.batches.conftest import seed_collection
from tests.helpers import create_key, migrate
from tests.jobs.processes import Proc, Server, base_env, wait_for
from tests.jobs.seed import seed_artifacts

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

TINY_CONFIG = {"num_chains": 1, "num_draws": 8, "num_burnin_steps": 4, "epsilon": 1e-3, "gamma": 100.0,
               "batch_size": 32, "seed": 3, "device": "cpu"}
NUM_CHECKPOINTS = 100
STEPS = [(37 * i) % NUM_CHECKPOINTS * 10 for i in range(NUM_CHECKPOINTS)]  # every step once, shuffled


def test_a_hundred_checkpoint_batch_runs_to_completion(tmp_path, postgres_url):  # noqa: ANN001
    import redis

    from backend.settings import Settings

    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, database_url=postgres_url)
    migrate(settings)
    key = create_key(settings, "big", owner="alice")
    data = seed_artifacts(settings, "alice")
    seed_collection(settings, "alice", "hundred", STEPS)
    queue = f"lh-hundred-{uuid.uuid4().hex[:10]}"
    broker_url = "redis://127.0.0.1:6379/13"
    env = base_env(data_dir, database_url=postgres_url, broker_url=broker_url, queue=queue, heartbeat_interval=1.0)
    processes: list[Proc] = []
    try:
        server = Server(data_dir, env, tmp_path / "server.log")
        processes.append(server)
        worker = Proc(["worker", "--name", "w1", "--queues", queue], env, tmp_path / "w1.log")
        processes.append(worker)
        wait_for(lambda: "ready." in worker.log(20_000) or not worker.alive(), 60, "the worker to be ready")
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        started = time.monotonic()
        response = client.post("/v1/batches", json={"dataset_id": data.dataset_id, "loss": "cross_entropy",
                                                    "config": TINY_CONFIG, "collection": "hundred"})
        assert response.status_code == 202, response.text
        batch = response.json()
        assert batch["total"] == NUM_CHECKPOINTS and time.monotonic() - started < 10

        final = wait_for(lambda: (lambda b: b if b["status"] not in ("queued", "running") else None)(
            client.get(f"/v1/batches/{batch['id']}").json()), 180, "the batch to finish", interval=1.0)
        assert final["status"] == "succeeded", (final, worker.log())
        assert final["counts"]["succeeded"] == NUM_CHECKPOINTS and final["progress"] == 1.0

        rows = client.get(f"/v1/batches/{batch['id']}/results").json()
        assert [r["step"] for r in rows] == sorted(STEPS)
        assert all(math.isfinite(r["llc_mean"]) for r in rows)
        assert len({r["job_id"] for r in rows}) == NUM_CHECKPOINTS
        csv_lines = client.get(f"/v1/batches/{batch['id']}/results", params={"format": "csv"}).text.splitlines()
        assert len(csv_lines) == NUM_CHECKPOINTS + 1
        jobs, cursor = [], None
        while True:  # every job listed once across pages
            page = client.get("/v1/jobs", params={"limit": 30, **({"cursor": cursor} if cursor else {})}).json()
            jobs += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert sorted(j["id"] for j in jobs) == sorted(r["job_id"] for r in rows)
        assert {j["attempts"] for j in jobs} == {1}  # each token claimed exactly one job once
        plot = client.get(f"/v1/batches/{batch['id']}/plot.png")
        assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
        print(f"100-checkpoint batch: {time.monotonic() - started:.1f} s from submission to results")
        client.close()
    finally:
        for proc in reversed(processes):
            proc.stop(timeout=10)
        redis.Redis.from_url(broker_url).delete(queue)
