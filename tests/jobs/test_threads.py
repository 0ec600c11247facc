"""The thread rule (worker/cores.py): a job gets the cores it can really have, re-checked while it runs.

The meter is tested against real processes keeping a core busy, inside and outside the deployment;
the arithmetic against chosen measurements; a running job's resizing through the real runner; and
a real embedded server next to a busy core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from worker import cores
from worker.cores import CoreMeter, ThreadRule

SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"

needs_two_cpus = pytest.mark.skipif(len(cores.usable_cpus()) < 2 or not os.path.exists("/proc/stat"),
                                    reason="needs Linux and at least two usable CPUs")


class Measured:
    """A meter that reports a chosen measurement."""

    def __init__(self, busy_elsewhere: float | None) -> None:
        self.busy_elsewhere = busy_elsewhere

    def measure(self) -> float | None:
        return self.busy_elsewhere


@pytest.mark.parametrize(("usable", "busy", "slots", "omp", "quota", "expected"), [
    (2, 0.0, 1, None, None, 2),
    (2, 1.0, 1, None, None, 1),     # one core busy elsewhere: one thread, not two fighting it
    (2, 0.15, 1, None, None, 2),    # a shell or an editor does not cost a thread
    (2, 0.5, 1, None, None, 1),     # half a core busy elsewhere does
    (2, 2.0, 1, None, None, 1),     # never fewer than one
    (16, 3.0, 2, None, None, 6),    # two job slots share the 13 free cores
    (16, 0.0, 1, 4, None, 4),       # OMP_NUM_THREADS caps the count
    (8, None, 1, None, None, 8),    # nothing measured yet (or no /proc): every usable core
    (64, 10.0, 1, None, 4.0, 4),    # a container's CPU quota caps the free cores ...
    (64, 61.0, 1, None, 4.0, 3),    # ... which other load on the host only takes once it leaves fewer
])
def test_the_rule(monkeypatch, usable, busy, slots, omp, quota, expected):  # noqa: ANN001
    monkeypatch.setattr(cores, "usable_cpus", lambda: list(range(usable)))
    monkeypatch.setattr(cores, "cpu_quota", lambda: quota)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", str(omp))
    count, reason = ThreadRule(job_slots=slots, meter=Measured(busy)).threads()
    assert count == expected
    assert f"{usable} usable cores" in reason
    if busy is not None:
        assert f"{busy:.1f} busy elsewhere" in reason


def test_a_fixed_count_turns_the_rule_off(monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rule = ThreadRule.for_process(job_slots=4, fixed=3)
    assert rule.meter is None
    assert rule.threads() == (3, "fixed by LAMBDAHAT_JOB_THREADS=3")


@needs_two_cpus
def test_the_meter_counts_a_busy_core_elsewhere_and_not_this_process():
    meter = CoreMeter(interval=3600)  # measured by hand below
    meter.measure()
    time.sleep(1.0)
    before = meter.measure()
    if before > 0.3:
        pytest.skip(f"the machine is not idle ({before:.1f} cores busy elsewhere): one spinning core cannot be told apart")
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=30)], start_new_session=True)
    try:
        time.sleep(0.5)  # let it start spinning
        meter.measure()
        time.sleep(1.5)
        busy = meter.measure()
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and 0.7 <= busy <= 1.5, busy

    # Work of this process (a job process's own threads) is not "elsewhere".
    end = time.time() + 1.5
    meter.measure()
    while time.time() < end:
        pass
    assert meter.measure() < 0.5


@needs_two_cpus
def test_job_processes_of_one_deployment_do_not_count_each_other(tmp_path):  # noqa: ANN001
    """Two children of one parent, as two warm job processes of one server: one spins, the other
    measures. The spinner is a sibling, part of the deployment, so nothing is busy elsewhere."""
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        before = subprocess.run([sys.executable, "-c", {MEASURE!r}], capture_output=True, text=True)
        print(before.stdout.strip() or before.stderr)
        spinner = subprocess.Popen([sys.executable, "-c", {SPIN.format(seconds=30)!r}])
        measurer = subprocess.run([sys.executable, "-c", {MEASURE!r}], capture_output=True, text=True)
        spinner.kill()
        print(measurer.stdout.strip() or measurer.stderr)
    """)
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    before, during = (float(line) for line in out.stdout.strip().splitlines()[-2:])
    if before > 0.3:
        pytest.skip(f"the machine is not idle ({before:.1f} cores busy elsewhere before the spinner started)")
    assert during < 0.5, out.stdout + out.stderr


MEASURE = """
import time
from worker.cores import CoreMeter
time.sleep(0.5)
meter = CoreMeter(interval=3600)
time.sleep(1.5)
print(meter.measure())
"""


def test_a_running_job_follows_the_rule_as_load_changes(api, seeded, monkeypatch):  # noqa: ANN001
    """Through the real runner: the job starts with the rule's count, and when the measurement
    changes mid-run (another process starts using a core) torch's thread count follows, and the
    result says so."""
    import torch

    from tests.jobs.test_runner import CONFIG, submit
    from worker import runner
    from worker.runner import run_job

    monkeypatch.setattr(cores, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(cores, "cpu_quota", lambda: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "THREADS_CHECK_INTERVAL_S", 0.0)  # check at every progress report
    meter = Measured(0.0)
    seen: list[int] = []
    original = runner.JobThreads.check

    def check(self, steps_done):  # noqa: ANN001, ANN202
        original(self, steps_done)
        seen.append(torch.get_num_threads())
        if len(seen) == 2:
            meter.busy_elsewhere = 1.0  # from now on, a core is busy elsewhere

    monkeypatch.setattr(runner.JobThreads, "check", check)
    before = torch.get_num_threads()
    try:
        job_id = submit(api, seeded, {**CONFIG, "num_draws": 20_000})
        outcome = run_job(job_id, settings=api.settings, threads=ThreadRule(job_slots=1, meter=meter))
    finally:
        torch.set_num_threads(before)
    assert outcome.status == "succeeded", outcome
    timings = api.get(f"/v1/jobs/{job_id}").json()["result"]["timings"]
    assert timings["threads"] == 2 and "0.0 busy elsewhere" in timings["threads_reason"]
    (change,) = timings["threads_changes"]
    assert change["threads"] == 1 and "1.0 busy elsewhere" in change["reason"] and change["step"] > 0
    assert seen[:2] == [2, 2] and seen[-1] == 1


@needs_two_cpus
def test_an_embedded_job_next_to_a_busy_core_uses_the_free_cores(tmp_path):  # noqa: ANN001
    from tests.jobs.processes import (
        Server,
        base_env,
        upload,
        wait_for,
        wait_job,
        warm_processes,
        write_artifacts,
    )
    from tests.jobs.test_embedded import CONFIG

    checkpoint, dataset, architecture = write_artifacts(tmp_path, seed=7)
    data_dir = tmp_path / "data"
    env = base_env(data_dir, heartbeat_interval=0.3)
    env.pop("OMP_NUM_THREADS")  # as a user's shell: torch would take every core
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=300)], start_new_session=True)
    server = Server(data_dir, env, tmp_path / "server.log")
    try:
        wait_for(lambda: all(p["warm"] for p in warm_processes(server)), 60, "the job process to warm up")
        time.sleep(1.5)  # a full measuring window with the spinner
        checkpoint_id, dataset_id = upload(server.client, checkpoint, dataset, architecture)
        job_id = server.client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id, "dataset_id": dataset_id,
                                                      "loss": "cross_entropy", "config": CONFIG}).json()["id"]
        job = wait_job(server.client, job_id, timeout=120)
        assert job["status"] == "succeeded", job
        timings = job["result"]["timings"]
        assert timings["threads"] <= len(cores.usable_cpus()) - 1, timings
        assert "busy elsewhere" in timings["threads_reason"]
    finally:
        server.stop()
        spinner.kill()
        spinner.wait()
