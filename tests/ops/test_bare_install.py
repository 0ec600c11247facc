"""``pip install lambdahat`` (no extras) in a fresh virtual environment: the library, the SDK and the
user commands work, and none of the server stack is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_STACK = ("fastapi", "sqlalchemy", "celery", "psycopg", "uvicorn", "alembic", "redis")


def _run(args: list[str], timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:  # noqa: ANN003
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:  # noqa: ANN001
    venv = tmp_path_factory.mktemp("bare") / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # The CPU build of torch first, as the Makefile does: a bare requirement could pull a CUDA build.
    torch = _run([*pip, "torch==2.13.0"])
    if torch.returncode != 0:
        torch = _run([*pip, "torch>=2.10,<2.15", "--index-url", "https://download.pytorch.org/whl/cpu"])
    assert torch.returncode == 0, torch.stderr[-2000:]
    # A copy of the source tree, so the build leaves nothing behind in the checkout.
    source = venv.parent / "source"
    ignore = ("*.egg-info", "build", ".venv", "__pycache__", ".git", "tests", "docs", "bench", "data", "logs")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*ignore))
    install = _run([*pip, str(source)])
    assert install.returncode == 0, install.stderr[-2000:]
    return venv


def test_the_bare_install_has_no_server_stack(bare_venv):  # noqa: ANN001
    code = f"import importlib.util as u; print([m for m in {SERVER_STACK!r} if u.find_spec(m)])"
    result = _run([str(bare_venv / "bin" / "python"), "-c", code], cwd=bare_venv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_bare_install_runs_the_library_and_the_sdk(bare_venv):  # noqa: ANN001
    code = textwrap.dedent(
        """
        import warnings
        import torch
        from lambdahat import AsyncClient, Client, LLCConfig, estimate_llc
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        x = torch.randn(64, 3)
        result = estimate_llc(model, (x, model(x).detach()), loss="mse",
                              config=LLCConfig(num_chains=2, num_draws=20, num_burnin_steps=0, epsilon=1e-4,
                                               nbeta=10.0, seed=0))
        print(type(result).__name__, Client.__name__, AsyncClient.__name__)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from client import Client as OldName
        print(OldName is Client, any(w.category is DeprecationWarning for w in caught))
        """
    )
    result = _run([str(bare_venv / "bin" / "python"), "-c", code], cwd=bare_venv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:2] == ["LLCResult Client AsyncClient", "True True"]


def test_the_bare_install_has_the_command_and_says_what_the_server_needs(bare_venv):  # noqa: ANN001
    command = str(bare_venv / "bin" / "lambdahat")
    help_text = _run([command, "--help"], cwd=bare_venv)
    assert help_text.returncode == 0, help_text.stderr
    assert "submit" in help_text.stdout and "serve" in help_text.stdout
    serve = _run([command, "serve"], cwd=bare_venv, timeout=120)
    assert serve.returncode == 2
    assert "pip install 'lambdahat[server]'" in serve.stderr
