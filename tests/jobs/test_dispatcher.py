"""The embedded dispatcher with real job subprocesses: woken on submit and when a job process ends,
oldest first, and what happens when a job process is killed (re-queued, then failed after
max_attempts with the reason). Its poll interval is set to 30 s, so every prompt reaction shown
here comes from a wake-up, not from polling."""

from __future__ import annotations

import os
import signal
import time

import pytest

from backend.dispatcher import EmbeddedDispatcher
from tests.jobs.processes import wait_for

pytestmark = pytest.mark.slow

CONFIG = {"num_chains": 2, "num_draws": 30, "num_burnin_steps": 10, "epsilon": 1e-3, "gamma": 100.0,
          "batch_size": 32, "seed": 1, "device": "cpu"}


@pytest.fixture
def database_url(sqlite_url):  # noqa: ANN001 - the dispatcher's logic does not depend on the database
    return sqlite_url


@pytest.fixture
def dispatcher(api):  # noqa: ANN001
    api.settings.heartbeat_interval = 0.3
    # A long poll interval: a job that starts quickly was started by the wake-up on submit.
    d = EmbeddedDispatcher(api.settings, poll_interval=30.0)
    d.start()
    yield d
    d.stop()


def submit(api, seeded, **config) -> str:  # noqa: ANN001
    response = api.post("/v1/jobs", json={"checkpoint_id": seeded.checkpoint_id, "dataset_id": seeded.dataset_id,
                                          "loss": "cross_entropy", "config": {**CONFIG, **config}})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_submitting_wakes_the_dispatcher_and_jobs_run_oldest_first(api, seeded, dispatcher):  # noqa: ANN001
    time.sleep(0.5)  # let the dispatcher's first (empty) pass finish: it now sleeps for 30 s
    first, second = submit(api, seeded), submit(api, seeded, seed=2)
    done = wait_for(lambda: (lambda j: j if j["status"] == "succeeded" else None)(api.get(f"/v1/jobs/{second}").json()),
                    25, "both jobs")
    one = api.get(f"/v1/jobs/{first}").json()
    assert one["status"] == "succeeded" and one["worker"] == "embedded"
    assert one["timings"]["started_at"] < done["timings"]["started_at"]  # one at a time, oldest first


def test_a_job_whose_process_keeps_dying_fails_with_the_reason(api, seeded, dispatcher):  # noqa: ANN001
    api.settings.max_attempts = 2
    job_id = submit(api, seeded, num_draws=100_000)

    def job() -> dict:
        return api.get(f"/v1/jobs/{job_id}").json()

    def kill_running_attempt(attempt: int) -> None:
        wait_for(lambda: job()["attempts"] == attempt and job()["progress"] > 0, 60, f"attempt {attempt} to run")
        # Out of memory, say. The dispatcher notices at once (not at its next 30 s poll).
        os.kill(dispatcher.job_process_pid(job_id), signal.SIGKILL)

    kill_running_attempt(1)
    wait_for(lambda: job()["attempts"] == 2, 20, "the job to be re-queued and started again")
    assert "attempt 1 was lost" in job()["error"] and "signal SIGKILL" in job()["error"]
    kill_running_attempt(2)
    failed = wait_for(lambda: (lambda j: j if j["status"] == "failed" else None)(job()), 30, "the job to fail")
    assert failed["attempts"] == 2
    assert "died 2 times" in failed["error"] and "signal SIGKILL" in failed["error"]
    assert "Giving up after 2 attempts" in failed["error"]
