"""Warm job processes of the embedded server (a real ``lambdahat serve``, real HTTP, real processes).

One process per job slot warms up when the server starts and then runs job after job. What must
still hold per job: results equal to a fresh process's for the same seed, whatever ran in the
process before (another architecture included); a killed process loses no job; a cancelled job
stops without taking the process or the next jobs with it; a process that ends a job holding too
much memory is replaced before the next one.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import random_state_dict, write_safetensors
from tests.jobs.processes import ROOT, Server, base_env, wait_for, wait_job, warm_processes
from tests.jobs.seed import CLASSIFIER, classification_data

pytestmark = pytest.mark.slow

OTHER = {"kind": "mlp", "in_features": 4, "hidden": [6, 5], "out_features": 3, "activation": "relu"}
CONFIG = {"num_chains": 2, "num_draws": 60, "num_burnin_steps": 20, "epsilon": 1e-3, "gamma": 100.0,
          "batch_size": 32, "seed": 3, "device": "cpu"}
LONG = {**CONFIG, "num_draws": 30_000}  # long enough to be caught running


@pytest.fixture
def artifacts(tmp_path):  # noqa: ANN001, ANN201
    """A dataset, three checkpoints of CLASSIFIER and two of OTHER (safetensors files)."""
    from estimator.architectures import normalize

    x, y = classification_data(n=64, seed=2)
    dataset = write_safetensors(tmp_path / "data.safetensors", {"x": x, "y": y})
    checkpoints = []
    for name, architecture, seeds in (("a", CLASSIFIER, (1, 2, 3)), ("b", OTHER, (4, 5))):
        architecture = normalize(architecture)
        for seed in seeds:
            path = write_safetensors(tmp_path / f"{name}{seed}.safetensors", random_state_dict(architecture, seed=seed))
            checkpoints.append((path, architecture))
    return dataset, checkpoints


def start(tmp_path: Path, **settings) -> Server:  # noqa: ANN003
    data_dir = tmp_path / "data"
    return Server(data_dir, base_env(data_dir, heartbeat_interval=0.3, **settings), tmp_path / "server.log")


def upload_all(server: Server, dataset: Path, checkpoints: list) -> tuple[str, list[str]]:  # noqa: ANN001
    with open(dataset, "rb") as f:
        dataset_id = server.client.post("/v1/datasets", files={"file": ("data.safetensors", f)}).json()["id"]
    ids = []
    for step, (path, architecture) in enumerate(checkpoints, start=1):
        with open(path, "rb") as f:
            response = server.client.post("/v1/checkpoints", files={"file": (path.name, f)},
                                          data={"architecture": json.dumps(architecture), "step": str(step)})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return dataset_id, ids


def submit_batch(server: Server, dataset_id: str, checkpoint_ids: list[str], config: dict) -> list[dict]:
    response = server.client.post("/v1/batches", json={"checkpoint_ids": checkpoint_ids, "dataset_id": dataset_id,
                                                       "loss": "cross_entropy", "config": config})
    assert response.status_code == 202, response.text
    jobs = server.client.get("/v1/jobs", params={"limit": 100}).json()["items"]
    by_checkpoint = {job["checkpoint_id"]: job for job in jobs if job.get("batch_id") == response.json()["id"]}
    return [by_checkpoint[checkpoint_id] for checkpoint_id in checkpoint_ids]


FRESH_PROCESS = r"""
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from estimator import LLCConfig, estimate_llc
from worker.loading import load_dataset, load_model
checkpoint, dataset, architecture, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
result = estimate_llc(load_model(checkpoint, "safetensors", architecture), load_dataset(dataset, "safetensors"),
                      loss="cross_entropy", config=LLCConfig(**config))
print(json.dumps({"llc_per_chain": result.llc_per_chain.tolist(),
                  "loss_trace": result.loss_trace.astype(np.float32).tolist()}))
"""


def fresh_process_estimate(checkpoint: Path, dataset: Path, architecture: dict, config: dict) -> dict:
    """``estimate_llc`` in a brand-new Python process: nothing traced or cached before it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(checkpoint), str(dataset), json.dumps(architecture),
                          json.dumps(config)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_equals_a_fresh_process(server: Server, job: dict, checkpoint: Path, dataset: Path, architecture: dict,
                                  config: dict) -> None:
    expected = fresh_process_estimate(checkpoint, dataset, architecture, config)
    assert job["result"]["llc_per_chain"] == expected["llc_per_chain"]
    traces = np.load(io.BytesIO(server.client.get(f"/v1/jobs/{job['id']}/traces?format=npz").content))
    np.testing.assert_array_equal(traces["loss"], np.asarray(expected["loss_trace"], dtype=np.float32))


def job_process(job: dict) -> tuple[int, int]:
    """(pid, the how-manieth job of that process) of a finished job."""
    info = job["result"]["timings"]["job_process"]
    return info["pid"], info["job_number"]


def process_running(server: Server, job: dict) -> int:
    """Once ``job`` runs (and has made progress), the pid of the warm process running it."""
    wait_job(server.client, job["id"], 60, until=lambda j: j["status"] == "running" and j["progress"] > 0)
    (pid,) = [p["pid"] for p in warm_processes(server) if p["busy"]]
    return pid


def test_two_architectures_in_one_batch_run_in_one_warm_process_as_in_fresh_ones(tmp_path, artifacts):  # noqa: ANN001
    dataset, checkpoints = artifacts
    server = start(tmp_path)
    try:
        wait_for(lambda: all(p["warm"] for p in warm_processes(server)), 60, "the job process to warm up")
        (warm_pid,) = [p["pid"] for p in warm_processes(server)]
        dataset_id, ids = upload_all(server, dataset, checkpoints)
        # a1 b4 a2 b5 a3: the architectures alternate, so each job follows one of the other architecture.
        order = [0, 3, 1, 4, 2]
        jobs = submit_batch(server, dataset_id, [ids[i] for i in order], CONFIG)
        done = [wait_job(server.client, job["id"], timeout=120) for job in jobs]
        assert all(job["status"] == "succeeded" for job in done), [(j["status"], j["error"]) for j in done]
        # One process ran them all, one after another, the warm-up not counted as a job.
        assert {job_process(job)[0] for job in done} == {warm_pid}
        assert sorted(job_process(job)[1] for job in done) == [1, 2, 3, 4, 5]
        # The first job of each architecture traced its gradient graph; the later ones reused it.
        by_run_order = sorted(zip(done, order, strict=True), key=lambda pair: job_process(pair[0])[1])
        seen: set[str] = set()
        for job, index in by_run_order:
            kind = "a" if index < 3 else "b"
            reused = "traced by an earlier call" in (job["result"]["chain_mode_reason"] or "")
            assert reused == (kind in seen), (kind, job["result"]["chain_mode_reason"])
            seen.add(kind)
        # ... and every result is exactly what a fresh process computes for the same seed.
        for job, index in zip(done, order, strict=True):
            path, architecture = checkpoints[index]
            assert_equals_a_fresh_process(server, job, path, dataset, architecture, CONFIG)
    finally:
        server.stop()


def test_a_killed_warm_process_loses_no_job(tmp_path, artifacts):  # noqa: ANN001
    dataset, checkpoints = artifacts
    server = start(tmp_path)
    try:
        dataset_id, ids = upload_all(server, dataset, checkpoints[:3])
        first, *rest = submit_batch(server, dataset_id, ids, {**LONG, "num_draws": 8_000})
        killed = process_running(server, first)
        os.kill(killed, signal.SIGKILL)  # out of memory, say

        done = [wait_job(server.client, job["id"], timeout=180) for job in (first, *rest)]
        assert all(job["status"] == "succeeded" for job in done), [(j["status"], j["error"]) for j in done]
        assert [job["attempts"] for job in done] == [2, 1, 1]  # only the killed job ran twice
        assert all(job_process(job)[0] != killed for job in done)
        path, architecture = checkpoints[0]
        assert_equals_a_fresh_process(server, done[0], path, dataset, architecture, {**LONG, "num_draws": 8_000})
    finally:
        server.stop()


def test_a_cancelled_job_leaves_the_warm_process_to_the_next_jobs(tmp_path, artifacts):  # noqa: ANN001
    dataset, checkpoints = artifacts
    server = start(tmp_path)
    try:
        dataset_id, ids = upload_all(server, dataset, checkpoints[:3])
        first = submit_batch(server, dataset_id, ids[:1], LONG)[0]
        rest = submit_batch(server, dataset_id, ids[1:], CONFIG)
        pid = process_running(server, first)
        assert server.client.post(f"/v1/jobs/{first['id']}/cancel").status_code == 200

        cancelled = wait_job(server.client, first["id"], timeout=30)
        assert cancelled["status"] == "cancelled" and "cancelled by request" in cancelled["error"]
        done = [wait_job(server.client, job["id"], timeout=120) for job in rest]
        assert all(job["status"] == "succeeded" for job in done), [(j["status"], j["error"]) for j in done]
        assert [job_process(job) for job in done] == [(pid, 2), (pid, 3)]  # the same process went on
        for job, (path, architecture) in zip(done, checkpoints[1:3], strict=True):
            assert_equals_a_fresh_process(server, job, path, dataset, architecture, CONFIG)
    finally:
        server.stop()


def test_a_process_holding_too_much_memory_after_a_job_is_replaced(tmp_path, artifacts):  # noqa: ANN001
    dataset, checkpoints = artifacts
    # Every process holds more than 1 MiB after its job: each job must get a fresh process.
    server = start(tmp_path, job_process_max_rss_bytes=2**20)
    try:
        dataset_id, ids = upload_all(server, dataset, checkpoints[:3])
        done = [wait_job(server.client, job["id"], timeout=120) for job in submit_batch(server, dataset_id, ids, CONFIG)]
        assert all(job["status"] == "succeeded" for job in done), [(j["status"], j["error"]) for j in done]
        processes = [job_process(job) for job in done]
        assert len({pid for pid, _ in processes}) == 3 and all(number == 1 for _, number in processes)
        assert "above the 1 MiB limit; replacing it" in server.log(50_000)
    finally:
        server.stop()
