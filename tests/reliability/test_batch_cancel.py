"""Cancelling a batch against a real embedded ``lambdahat serve`` (job subprocesses, real HTTP): the
queued jobs are cancelled at once and the running one stops within seconds; the batch ends cancelled."""

from __future__ import annotations

import time

import pytest

from tests.helpers import random_state_dict, write_safetensors
from tests.jobs.processes import Server, base_env, upload, wait_for, wait_job
from tests.jobs.seed import CLASSIFIER, classification_data

pytestmark = pytest.mark.slow

LONG = {"num_chains": 2, "num_draws": 100_000, "num_burnin_steps": 10, "epsilon": 1e-3, "gamma": 100.0,
        "batch_size": 32, "device": "cpu", "seed": 1}


def test_cancelling_a_batch_stops_queued_and_running_jobs_within_seconds(tmp_path):  # noqa: ANN001
    from estimator.architectures import normalize

    architecture = normalize(CLASSIFIER)
    x, y = classification_data(n=64, seed=3)
    dataset = write_safetensors(tmp_path / "data.safetensors", {"x": x, "y": y})
    data_dir = tmp_path / "data"
    server = Server(data_dir, base_env(data_dir, heartbeat_interval=0.3), tmp_path / "server.log")
    try:
        dataset_id = None
        for step in (100, 200, 300):
            checkpoint = write_safetensors(tmp_path / f"model-{step}.safetensors", random_state_dict(architecture, step))
            _, dataset_id = upload(server.client, checkpoint, dataset, architecture, collection="run", step=step)
        response = server.client.post("/v1/batches", json={"collection": "run", "dataset_id": dataset_id,
                                                           "loss": "cross_entropy", "config": LONG})
        assert response.status_code == 202, response.text
        batch_id = response.json()["id"]
        rows = server.client.get(f"/v1/batches/{batch_id}/results").json()
        assert len(rows) == 3
        wait_for(lambda: any(server.client.get(f"/v1/jobs/{r['job_id']}").json()["progress"] > 0 for r in rows),
                 120, "a job of the batch to be sampling")

        asked = time.monotonic()
        assert server.client.post(f"/v1/batches/{batch_id}/cancel").status_code == 200
        batch = wait_for(lambda: (lambda b: b if b["status"] == "cancelled" else None)(
            server.client.get(f"/v1/batches/{batch_id}").json()), 30, "the batch to be cancelled")
        took = time.monotonic() - asked
        assert took < 10, f"cancelling the batch took {took:.1f} s"
        assert batch["counts"]["cancelled"] == 3, batch
        for row in rows:
            job = wait_job(server.client, row["job_id"], 10)
            assert job["status"] == "cancelled" and job["draws_done"] < LONG["num_draws"], job
    finally:
        server.stop()
