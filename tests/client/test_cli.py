"""The ``lambdahat`` user commands, run as subprocesses against a live server: output formats and exit codes."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import matplotlib.image as mpimg
import numpy as np
import pytest
from safetensors.torch import save_file

from tests.client.conftest import LiveServer, free_port, lambdahat_command
from tests.client.helpers import FAST_CONFIG, MLP_ARCHITECTURE, SLOW_CONFIG, classification_data, mlp


def run_cli(server: LiveServer, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``lambdahat ARGS`` with the server's data dir in the environment (the key file fallback)."""
    return subprocess.run(
        [*lambdahat_command(), *args],
        env=server.env(LAMBDAHAT_URL=server.url, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def fails_with(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-files")
    np.savez(root / "data.npz", **classification_data(n=64, seed=11))
    (root / "arch.json").write_text(json.dumps(MLP_ARCHITECTURE))
    for step in (10, 20, 5):
        state = {k: v.contiguous() for k, v in mlp(seed=step).state_dict().items()}
        save_file(state, str(root / f"step_{step}.safetensors"))
    return root


@pytest.fixture(scope="module")
def uploaded(live_server, files) -> dict[str, str]:
    """Ids of a dataset and of the three checkpoints of collection cli-run, uploaded through the CLI."""
    datasets = json.loads(ok(run_cli(live_server, "upload-dataset", str(files / "data.npz"), "--format", "json")))
    paths = [str(files / f"step_{s}.safetensors") for s in (10, 20, 5)]
    checkpoints = json.loads(
        ok(
            run_cli(
                live_server, "upload", *paths, "--architecture", str(files / "arch.json"),
                "--collection", "cli-run", "--step-from-filename", "--format", "json",
            )
        )
    )
    assert [c["step"] for c in checkpoints] == [10, 20, 5]
    assert datasets[0]["n"] == 64
    return {"dataset": datasets[0]["id"], "checkpoint": checkpoints[0]["id"]}


def test_upload_lists_checkpoints_as_csv(live_server, uploaded):
    rows = list(csv.DictReader(io.StringIO(ok(run_cli(live_server, "checkpoints", "--collection", "cli-run", "--format", "csv")))))
    assert sorted(int(r["step"]) for r in rows) == [5, 10, 20]
    assert uploaded["checkpoint"] in {r["id"] for r in rows}
    table = ok(run_cli(live_server, "datasets"))
    assert uploaded["dataset"] in table  # whole ids, even when piped


def test_submit_wait_status_results_traces(live_server, uploaded, tmp_path):
    job_id = ok(
        run_cli(
            live_server, "submit", uploaded["checkpoint"], "--dataset", uploaded["dataset"], "--loss", "cross_entropy",
            "--config", json.dumps({"num_chains": FAST_CONFIG["num_chains"]}),
            *[f"--set={k}={json.dumps(v)}" for k, v in FAST_CONFIG.items() if k != "num_chains"],
            "--format", "ids",
        )
    ).strip()
    assert len(job_id) == 32

    waited = run_cli(live_server, "wait", job_id, "--poll", "0.3", "--timeout", "240")
    assert "succeeded" in ok(waited)

    status = json.loads(ok(run_cli(live_server, "status", job_id, "--format", "json")))
    assert status["status"] == "succeeded" and status["config"] == FAST_CONFIG
    llc_mean = status["result"]["llc_mean"]

    plot = tmp_path / "job.png"
    rows = list(csv.DictReader(io.StringIO(ok(run_cli(live_server, "results", job_id, "--format", "csv", "--plot", str(plot))))))
    assert len(rows) == 1 and rows[0]["step"] == "10" and rows[0]["status"] == "succeeded"
    assert float(rows[0]["llc_mean"]) == pytest.approx(llc_mean)
    image = mpimg.imread(plot, format="png")
    assert image.shape[:2] == (750, 1000) and image[..., :3].std() > 0.05

    trace_rows = list(csv.DictReader(io.StringIO(ok(run_cli(live_server, "traces", job_id, "--format", "csv")))))
    assert len(trace_rows) == 2 * FAST_CONFIG["num_draws"]
    assert {r["chain"] for r in trace_rows} == {"0", "1"}
    traces = json.loads(ok(run_cli(live_server, "traces", job_id, "--format", "json")))
    assert np.asarray(traces["loss"]).shape == (2, FAST_CONFIG["num_draws"])
    assert "final" in ok(run_cli(live_server, "traces", job_id))
    assert job_id in ok(run_cli(live_server, "results", job_id))


def test_exit_codes_and_messages(live_server, uploaded, tmp_path):
    fails_with(run_cli(live_server, "status", "0" * 32), 4, "error:", "no job or batch")
    fails_with(run_cli(live_server, "datasets", "--api-key", "lh_wrong"), 5, "invalid or revoked API key")
    fails_with(
        run_cli(live_server, "submit", uploaded["checkpoint"], "--dataset", uploaded["dataset"], "--loss",
                "cross_entropy", "--set", "num_chains=0"),
        6, "num_chains",
    )
    fails_with(
        run_cli(live_server, "submit", uploaded["checkpoint"], "--dataset", uploaded["dataset"], "--loss",
                "cross_entropy", "--config", "{not json"),
        2, "--config is not valid JSON",
    )
    fails_with(run_cli(live_server, "upload", str(tmp_path / "missing.safetensors")), 2, "no such file")
    fails_with(run_cli(live_server, "datasets", "--url", f"http://127.0.0.1:{free_port()}"), 3, "cannot reach")
    assert run_cli(live_server, "submit", uploaded["checkpoint"], "--loss", "mse").returncode == 2  # no --dataset
    fails_with(run_cli(live_server, "upload", "a", "b", "--step", "3"), 2)


def test_wait_timeout_then_cancelled_job_exit_codes(live_server, uploaded):
    job_id = ok(
        run_cli(
            live_server, "submit", uploaded["checkpoint"], "--dataset", uploaded["dataset"], "--loss", "cross_entropy",
            "--config", json.dumps(SLOW_CONFIG), "--format", "ids",
        )
    ).strip()
    try:
        fails_with(run_cli(live_server, "wait", job_id, "--timeout", "1", "--poll", "0.2"), 7, "after 1.0 s")
    finally:
        cancelled = ok(run_cli(live_server, "cancel", job_id, "--format", "json"))
    assert json.loads(cancelled)["id"] == job_id
    waited = run_cli(live_server, "wait", job_id, "--quiet", "--timeout", "60", "--format", "json")
    assert waited.returncode == 1, waited.stderr
    assert json.loads(waited.stdout)["status"] == "cancelled"
