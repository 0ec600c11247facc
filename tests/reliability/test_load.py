"""A bounded version of bench/load.py in the suite: a real ``lambdahat serve`` (embedded: SQLite, the
dispatcher's job processes writing results meanwhile) under 50 concurrent clients (as in the
benchmark; 600 requests) mixing submissions, status polls, list pages and trace downloads.

Asserts zero failed requests: no 5xx from SQLite lock contention (50 clients used to exhaust the
worker threads and fail with "database is locked" before api/admission.py), no transport errors.
Latency is reported by the benchmark, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_concurrent_clients_get_no_errors(tmp_path):  # noqa: ANN001
    out = tmp_path / "load.json"
    completed = subprocess.run([sys.executable, "bench/load.py", "--clients", "50", "--requests", "600",
                                "--finished-jobs", "2", "--json", str(out)],
                               capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    summary = json.loads(out.read_text())
    assert summary["errors"] == 0 and summary["requests"] == 600
    counts = {kind: row["count"] for kind, row in summary["by_kind"].items()}
    assert sum(counts.values()) == 600
    assert set(counts) == {"submit", "status", "list", "traces"}  # every kind of request was exercised
