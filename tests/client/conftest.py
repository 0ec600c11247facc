"""A live lambdahat server for the client tests: ``lambdahat serve`` in a subprocess, over real HTTP.

Embedded mode (no broker), SQLite in a temporary data directory. The API key is the one the server
writes to ``<data dir>/api_key`` on first start -- the same file the client falls back to.
One server is shared by every test of the session (starting one takes seconds); tests keep to
their own collections and ids so they do not depend on each other.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

STARTUP_TIMEOUT_S = 90.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LiveServer:
    url: str
    api_key: str
    data_dir: Path
    log_path: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a client process: only the server's data dir, nothing of the server config."""
        return process_env(self.data_dir, COLUMNS="200", **extra)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lambdahat_command() -> list[str]:
    """The installed ``lambdahat`` script of this interpreter's environment (else ``python -m``)."""
    script = Path(sys.executable).with_name("lambdahat")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ops.cli"]


def process_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """A server-side process's environment: this checkout importable, one thread (2 shared cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAHAT_")}
    env.update(
        {
            "LAMBDAHAT_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
            "OMP_NUM_THREADS": "1",
        },
        **overrides,
    )
    return env


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [*lambdahat_command(), *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped together with its job subprocesses
        )


def start_server(data_dir: Path, log_path: Path, **env_overrides: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = process_env(data_dir, **env_overrides)
    process = start_process(["serve", "--host", "127.0.0.1", "--port", str(port)], env, log_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"`lambdahat serve` exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(process)
    raise RuntimeError(f"`lambdahat serve` did not answer /healthz within {STARTUP_TIMEOUT_S} s")


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: only the server and its job processes
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("live-server")
    data_dir = root / "data"
    log_path = root / "server.log"
    process, url = start_server(data_dir, log_path)
    try:
        key_file = data_dir / "api_key"
        deadline = time.monotonic() + 10
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not key_file.exists():
            raise RuntimeError(f"the server wrote no key file at {key_file}")
        yield LiveServer(url=url, api_key=key_file.read_text().strip(), data_dir=data_dir, log_path=log_path)
    finally:
        stop_process(process)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def client_env(live_server, monkeypatch) -> LiveServer:
    """In-process clients see the live server's data dir (so the key file fallback finds its key)."""
    for name in list(os.environ):
        if name.startswith("LAMBDAHAT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LAMBDAHAT_DATA_DIR", str(live_server.data_dir))
    return live_server
