"""bench/speed.py end to end on a tiny problem: the harness runs, counts steps alike, reports memory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_speed_benchmark_runs_bare_and_lambdahat(tmp_path):
    out = tmp_path / "speed.json"
    command = [
        sys.executable, str(REPO / "bench" / "speed.py"),
        "--models", "mlp", "--contenders", "bare,lambdahat", "--repeats", "1",
        "--n", "600", "--mlp-draws", "4", "--train-steps", "3", "--warmup-draws", "1",
        "--json-out", str(out), "--work-dir", str(tmp_path),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "lambdahat / bare" in completed.stdout

    report = json.loads(out.read_text())
    mlp = report["results"]["mlp"]
    assert set(mlp) == {"bare", "lambdahat"}
    # Same protocol: 4 chains x 4 draws for both contenders.
    assert mlp["bare"]["steps"] == mlp["lambdahat"]["steps"] == 16
    assert mlp["bare"]["params"] == mlp["lambdahat"]["params"] == 85_002
    assert mlp["bare"]["llc_mean"] is None
    assert isinstance(mlp["lambdahat"]["llc_mean"], float)
    for result in mlp.values():
        assert result["seconds"] > 0 and result["cpu_seconds"] > 0
        assert result["rss_peak_bytes"] >= result["rss_before_bytes"] > 0
    assert report["facts"]["mlp"]["activation_bytes"] > 0


def test_unknown_contender_is_a_clear_error():
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "speed.py"), "--contenders", "bare,nope"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "unknown contender 'nope'" in completed.stderr
