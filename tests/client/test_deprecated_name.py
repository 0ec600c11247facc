"""The SDK's old import name ``client`` keeps working for one release, with a DeprecationWarning."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_old_name_warns_and_gives_the_same_objects():
    code = textwrap.dedent(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import client
            from client.errors import NotFound
            from client.models import Job
        import lambdahat, lambdahat.errors, lambdahat.models
        print(any(w.category is DeprecationWarning and "lambdahat" in str(w.message) for w in caught))
        print(client.Client is lambdahat.Client, client.AsyncClient is lambdahat.AsyncClient,
              NotFound is lambdahat.errors.NotFound, Job is lambdahat.models.Job)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "True", "True"]
