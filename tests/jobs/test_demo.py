"""``lambdahat demo`` runs end to end (quick mode: a short explicit LLC config; the full demo's
numbers and timing are measured by hand, see docs/jobs.md)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.jobs.processes import ROOT, base_env, free_port

pytestmark = pytest.mark.slow


def test_demo_trains_uploads_scores_and_reports(tmp_path):  # noqa: ANN001
    port = free_port()
    env = base_env(tmp_path / "data", demo_quick=1)
    env["COLUMNS"] = "120"
    run = subprocess.run([sys.executable, "-m", "ops.cli", "demo", "--port", str(port)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    rows = re.findall(r"│\s+(\d+) │\s+[\d.]+ │\s+[\d.]+ │\s+(-?[\d.]+) ± ([\d.]+) │\s+(\d+) │", output)
    assert [int(r[0]) for r in rows] == [100, 300, 1000, 3000, 10000], output
    assert "quick mode" in output and f"http://127.0.0.1:{port}" in output
    demo_dir = tmp_path / "data" / "demo"
    assert (demo_dir / "api_key").exists() and (demo_dir / "lambdahat.db").exists()
    # The server was stopped (its port is free again) and the results persist for a later `serve`.
    from tests.jobs.processes import Server

    server = Server(demo_dir, base_env(demo_dir), tmp_path / "again.log", port=port)
    try:
        jobs = server.client.get("/v1/jobs").json()["items"]
        assert len(jobs) == 5 and {j["status"] for j in jobs} == {"succeeded"}
    finally:
        server.stop()
