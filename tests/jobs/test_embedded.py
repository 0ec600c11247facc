"""Embedded mode end to end: a real ``lambdahat serve`` process (no Redis), real HTTP, job subprocesses.

Upload -> submit -> the dispatcher runs the job in a subprocess -> result and traces over HTTP, equal
to what ``estimate_llc`` computes in this process. Then the server is killed mid-job and restarted:
the job is re-queued and finishes (attempts 2); a graceful stop gives the attempt back.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tests.helpers import random_state_dict, write_safetensors
from tests.jobs.processes import Server, base_env, upload, wait_job
from tests.jobs.seed import CLASSIFIER, classification_data

pytestmark = pytest.mark.slow

CONFIG = {"num_chains": 2, "num_draws": 40, "num_burnin_steps": 20, "epsilon": 1e-3, "gamma": 100.0,
          "batch_size": 32, "device": "cpu"}


@pytest.fixture
def files(tmp_path):  # noqa: ANN001, ANN201
    from estimator.architectures import normalize

    architecture = normalize(CLASSIFIER)
    checkpoint = write_safetensors(tmp_path / "model.safetensors", random_state_dict(architecture, seed=4))
    x, y = classification_data(n=64, seed=4)
    dataset = write_safetensors(tmp_path / "data.safetensors", {"x": x, "y": y})
    return checkpoint, dataset, architecture


def library_estimate(checkpoint, dataset, architecture, config):  # noqa: ANN001, ANN201
    from estimator import LLCConfig, estimate_llc
    from worker.loading import load_dataset, load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job process (OMP_NUM_THREADS=1)
    try:
        model = load_model(checkpoint, "safetensors", architecture)
        return estimate_llc(model, load_dataset(dataset, "safetensors"), loss="cross_entropy",
                            config=LLCConfig(**config))
    finally:
        torch.set_num_threads(threads)


def test_embedded_service_from_upload_to_traces(tmp_path, files):  # noqa: ANN001
    checkpoint, dataset, architecture = files
    data_dir = tmp_path / "data"
    server = Server(data_dir, base_env(data_dir, heartbeat_interval=0.5), tmp_path / "server.log")
    try:
        checkpoint_id, dataset_id = upload(server.client, checkpoint, dataset, architecture, step=100)
        job_ids = []
        for seed in (1, 2):
            response = server.client.post("/v1/jobs", json={
                "checkpoint_id": checkpoint_id, "dataset_id": dataset_id, "loss": "cross_entropy",
                "config": {**CONFIG, "seed": seed}})
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])

        for seed, job_id in zip((1, 2), job_ids, strict=True):
            job = wait_job(server.client, job_id, timeout=120)
            assert job["status"] == "succeeded", (job, server.log())
            assert (job["attempts"], job["worker"], job["progress"]) == (1, "embedded", 1.0)
            expected = library_estimate(checkpoint, dataset, architecture, {**CONFIG, "seed": seed})
            # The service computes exactly what the library computes.
            assert job["result"]["llc_mean"] == expected.llc_mean
            assert job["result"]["llc_per_chain"] == expected.llc_per_chain.tolist()
            traces = np.load(io.BytesIO(server.client.get(f"/v1/jobs/{job_id}/traces?format=npz").content))
            np.testing.assert_array_equal(traces["loss"], expected.loss_trace.astype(np.float32))
            np.testing.assert_array_equal(traces["llc"], expected.llc_trace.astype(np.float32))
            assert (data_dir / "logs" / "jobs" / f"{job_id}.log").exists()
        listed = server.client.get("/v1/jobs", params={"status": "succeeded"}).json()["items"]
        assert {j["id"] for j in listed} == set(job_ids)
    finally:
        server.stop()


def test_jobs_survive_server_crash_and_restart(tmp_path, files):  # noqa: ANN001
    checkpoint, dataset, architecture = files
    data_dir = tmp_path / "data"
    env = base_env(data_dir, heartbeat_interval=0.3)
    server = Server(data_dir, env, tmp_path / "server1.log")
    try:
        checkpoint_id, dataset_id = upload(server.client, checkpoint, dataset, architecture)
        response = server.client.post("/v1/jobs", json={
            "checkpoint_id": checkpoint_id, "dataset_id": dataset_id, "loss": "cross_entropy",
            "config": {**CONFIG, "num_draws": 20_000, "seed": 5}})  # long enough to be caught running
        job_id = response.json()["id"]
        wait_job(server.client, job_id, 60, until=lambda j: j["status"] == "running" and j["progress"] > 0)
        server.process.kill()  # a crash: the server dies, its job process is orphaned
        server.process.wait()
    finally:
        server.stop()

    server = Server(data_dir, env, tmp_path / "server2.log")
    try:
        job = server.client.get(f"/v1/jobs/{job_id}").json()
        # Re-queued on start (attempt 1 counted) and picked up again.
        assert job["status"] in ("queued", "running") and job["attempts"] in (1, 2), job
        wait_job(server.client, job_id, 60, until=lambda j: j["status"] == "running" and j["attempts"] == 2
                 and j["progress"] > 0)
        server.stop()  # graceful: the running attempt is handed back, not counted
    finally:
        server.stop()

    server = Server(data_dir, env, tmp_path / "server3.log")
    try:
        job = wait_job(server.client, job_id, timeout=180)
        assert job["status"] == "succeeded", (job, server.log())
        assert job["attempts"] == 2 and job["error"] is None
        traces = server.client.get(f"/v1/jobs/{job_id}/traces").json()
        assert (traces["num_chains"], traces["num_draws"]) == (2, 20_000)
        log = (data_dir / "logs" / "jobs" / f"{job_id}.log").read_text()
        assert "dispatcher that started this process is gone" in log  # the orphan stopped itself
    finally:
        server.stop()
