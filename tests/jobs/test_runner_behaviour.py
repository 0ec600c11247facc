"""The job runner's behaviour, on SQLite only (it does not depend on the database; test_runner.py
covers both): re-runs replace rows, readable failures, cancel within seconds, the time limit."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from backend.db import session_scope
from backend.models import Job, JobChain, TraceChunk
from tests.jobs.test_runner import CONFIG, submit
from worker.runner import run_job


@pytest.fixture
def database_url(sqlite_url):  # noqa: ANN001
    return sqlite_url


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_rerun_replaces_rows_left_by_an_earlier_attempt(api, seeded):  # noqa: ANN001
    job_id = submit(api, seeded)
    with session_scope(api.settings) as session:
        session.add(TraceChunk(job_id=job_id, chain=5, series="loss", start_draw=0, num_draws=1, data=b"\0" * 4))
        session.add(JobChain(job_id=job_id, chain=5, num_draws=1))
    assert run_job(job_id, settings=api.settings).status == "succeeded"
    with session_scope(api.settings) as session:
        chunks = session.scalars(select(TraceChunk).where(TraceChunk.job_id == job_id)).all()
        assert sorted({c.chain for c in chunks}) == [0, 1]
        assert sum(c.num_draws for c in chunks) == 2 * CONFIG["num_chains"] * CONFIG["num_draws"]
        assert session.scalar(select(func.count()).select_from(JobChain).where(JobChain.job_id == job_id)) == 2


def test_errors_become_readable_job_failures(api, seeded):  # noqa: ANN001
    bad_config = submit(api, seeded)
    with session_scope(api.settings) as session:
        session.get(Job, bad_config).config = {"num_chains": "four"}  # past the API's checks
    assert run_job(bad_config, settings=api.settings).status == "failed"
    error = api.get(f"/v1/jobs/{bad_config}").json()["error"]
    assert error.startswith("checking the config failed: ValueError:") and "num_chains" in error

    wrong_loss = submit(api, seeded, loss="bce_with_logits")  # 3 logits vs integer class labels
    assert run_job(wrong_loss, settings=api.settings).status == "failed"
    error = api.get(f"/v1/jobs/{wrong_loss}").json()["error"]
    assert error.startswith("estimating the LLC failed:") and "Traceback" not in error

    missing_file = submit(api, seeded)
    seeded.checkpoint_path.chmod(0o600)
    seeded.checkpoint_path.unlink()
    assert run_job(missing_file, settings=api.settings).status == "failed"
    error = api.get(f"/v1/jobs/{missing_file}").json()["error"]
    assert error.startswith("loading the checkpoint failed: FileNotFoundError:") and "ARTIFACT_DIR" in error
    assert str(api.settings.artifact_dir) not in error


def _run_in_thread(api, job_id):  # noqa: ANN001, ANN202
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(run_job(job_id, settings=api.settings)))
    thread.start()
    return thread, outcome


def _wait_running(api, job_id, timeout=60.0) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"] > 0:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not start making progress: {job}")


def test_cancel_stops_a_running_job_within_seconds(api, seeded):  # noqa: ANN001
    api.settings.heartbeat_interval = 0.2
    job_id = submit(api, seeded, config={**CONFIG, "num_draws": 100_000})
    thread, outcome = _run_in_thread(api, job_id)
    _wait_running(api, job_id)
    asked = time.monotonic()
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["cancel_requested"] is True
    thread.join(timeout=30)
    took = time.monotonic() - asked
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert outcome[0].status == "cancelled" and job["status"] == "cancelled"
    assert "cancelled by request" in job["error"] and job["draws_done"] < 100_000
    assert took < 5.0, f"cancellation took {took:.1f} s"
    assert api.get(f"/v1/jobs/{job_id}/traces").status_code == 409


def test_time_limit_fails_the_job(api, seeded):  # noqa: ANN001
    api.settings.heartbeat_interval = 0.2
    api.settings.job_time_limit = 2.0
    job_id = submit(api, seeded, config={**CONFIG, "num_draws": 100_000})
    started = time.monotonic()
    assert run_job(job_id, settings=api.settings).status == "failed"
    assert time.monotonic() - started < 15
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and "time limit of 2 s exceeded" in job["error"]


STUCK_SAMPLER = r"""
import sys, time
import estimator
import worker.runner as runner

runner.HARD_STOP_GRACE_S = 1.0


class Event:
    steps_done, total_steps, draws_done = 1, 10, [1]


def stuck(model, data, loss, config, progress):
    progress(Event())
    time.sleep(120)  # one enormous step that never reports back (native code, say)


estimator.estimate_llc = stuck
runner.run_job(sys.argv[1])
"""


def test_a_cancelled_job_whose_sampler_does_not_stop_ends_its_process(api, seeded):  # noqa: ANN001
    """Cancellation is cooperative; a sampler that never returns to the progress callback must not
    hold the process (a warm job process or a Celery pool process) and the jobs after it."""
    import os
    import subprocess
    import sys

    from tests.jobs.processes import ROOT

    job_id = submit(api, seeded)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAMBDAHAT_DATA_DIR": str(api.settings.data_dir),
           "LAMBDAHAT_DATABASE_URL": api.settings.database_url, "LAMBDAHAT_HEARTBEAT_INTERVAL": "0.2"}
    process = subprocess.Popen([sys.executable, "-c", STUCK_SAMPLER, job_id], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_running(api, job_id)
        assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 3, output
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled", job
    assert "the sampler did not stop within 1 s, so its process was ended" in job["error"]
