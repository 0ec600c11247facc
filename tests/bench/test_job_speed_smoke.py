"""bench/job_speed.py end to end at a small size: a real embedded server scores a batch, and the
report compares it with the library call on the same checkpoints."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_job_speed_benchmark_runs_a_batch_on_the_embedded_server(tmp_path):
    out = tmp_path / "job_speed.json"
    command = [sys.executable, str(REPO / "bench" / "job_speed.py"), "--scenarios", "batch", "--modes", "embedded",
               "--repeats", "1", "--checkpoints", "3", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "overhead per job" in completed.stdout
    rows = json.loads(out.read_text())["rows"]
    library, embedded = rows
    assert library["contender"].startswith("library") and library["checkpoints"] == 3
    assert embedded["contender"] == "embedded batch (per checkpoint)" and embedded["median_s"] > 0
    assert embedded["overhead_s"] == pytest.approx(embedded["median_s"] - library["median_s"])
