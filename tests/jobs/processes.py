"""Real processes for end-to-end job tests: ``lambdahat serve`` and ``lambdahat worker`` subprocesses.

Each process gets its own session (process group) so a test can SIGKILL it together with its
children, and writes its output to a log file that is shown when a test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def base_env(data_dir: Path, **settings: Any) -> dict[str, str]:
    """The environment of a deployment: LAMBDAHAT_* from ``settings`` (None removes a variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAHAT_")}
    env["LAMBDAHAT_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    for name, value in settings.items():
        if value is not None:
            env[f"LAMBDAHAT_{name.upper()}"] = str(value)
    return env


class Proc:
    """A ``lambdahat`` subprocess in its own process group."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "ops.cli", *args], env=env, cwd=ROOT,
                                        stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process and every child it started (the pool processes of a Celery worker)."""
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM to the main process), then SIGKILL to the group if needed."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()
        self._log.close()

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


class Server(Proc):
    """``lambdahat serve`` on a free port; ``client`` is an httpx client with the local key."""

    def __init__(self, data_dir: Path, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        super().__init__(["serve", "--port", str(self.port)], env, log_path)
        try:
            wait_for(self._healthy, 60, f"the server on {self.url}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"server did not start:\n{self.log()}") from None
        key = (data_dir / "api_key").read_text().strip()
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def _healthy(self) -> bool:
        if not self.alive():
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        super().stop(timeout)


def upload(client: httpx.Client, checkpoint: Path, dataset: Path, architecture: dict[str, Any],
           **checkpoint_fields: Any) -> tuple[str, str]:
    """Upload a checkpoint and a dataset over HTTP; returns their ids."""
    import json

    with open(dataset, "rb") as f:
        response = client.post("/v1/datasets", files={"file": ("data.safetensors", f)})
    assert response.status_code == 201, response.text
    dataset_id = response.json()["id"]
    data = {"architecture": json.dumps(architecture), **{k: str(v) for k, v in checkpoint_fields.items()}}
    with open(checkpoint, "rb") as f:
        response = client.post("/v1/checkpoints", files={"file": ("model.safetensors", f)}, data=data)
    assert response.status_code == 201, response.text
    return response.json()["id"], dataset_id


def warm_processes(server: Server) -> list[dict]:
    """The embedded server's job processes, as ``/v1/status`` reports them."""
    return server.client.get("/v1/status").json()["embedded"]["job_processes"]


def wait_job(client: httpx.Client, job_id: str, timeout: float, until: Callable[[dict], bool] | None = None) -> dict:
    until = until or (lambda job: job["status"] in ("succeeded", "failed", "cancelled"))
    return wait_for(lambda: (lambda job: job if until(job) else None)(client.get(f"/v1/jobs/{job_id}").json()),
                    timeout, f"job {job_id}")


# --- a distributed deployment: serve + workers sharing one database, broker and queue ----------------

# Small, fixed-ε jobs; tests that must catch a job running pass more draws.
JOB_CONFIG = {"num_chains": 2, "num_draws": 60, "num_burnin_steps": 20, "epsilon": 1e-3, "gamma": 100.0,
              "batch_size": 32, "device": "cpu"}  # fmt: skip


class Deployment:
    """One distributed deployment: the environment its processes share (a fresh queue name on
    ``broker_url``, a data dir under ``tmp_path``, a migrated ``database_url``), and the processes."""

    def __init__(self, tmp_path: Path, database_url: str, broker_url: str, **settings: Any) -> None:
        from backend.settings import Settings
        from tests.helpers import migrate

        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "data"
        self.broker_url = broker_url
        self.queue = f"lh-test-{os.urandom(5).hex()}"
        self.env = base_env(self.data_dir, database_url=database_url, broker_url=broker_url, queue=self.queue,
                            **settings)  # fmt: skip
        migrate(Settings(data_dir=self.data_dir, database_url=database_url))
        self.processes: list[Proc] = []

    def serve(self, log_name: str = "server.log") -> Server:
        server = Server(self.data_dir, self.env, self.tmp_path / log_name)
        self.processes.append(server)
        return server

    def worker(self, name: str) -> Proc:
        proc = Proc(["worker", "--name", name, "--queues", self.queue], self.env, self.tmp_path / f"{name}.log")
        self.processes.append(proc)
        wait_for(lambda: "ready." in proc.log(20_000) or not proc.alive(), 60, f"worker {name} to be ready")
        assert proc.alive(), proc.log()
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()}" for p in self.processes)

    def close(self) -> None:
        """Stop every process, then drop this deployment's queue (and its priority sub-queues)."""
        import redis

        for proc in reversed(self.processes):
            proc.stop(timeout=10)
        try:
            client = redis.Redis.from_url(self.broker_url, socket_connect_timeout=2)
            client.delete(self.queue, *[f"{self.queue}\x06\x16{p}" for p in (3, 6, 9)])
        except redis.RedisError:
            pass  # a test's private broker that is already gone


def write_artifacts(tmp_path: Path, seed: int) -> tuple[Path, Path, dict[str, Any]]:
    """A small classifier checkpoint and its dataset as safetensors files: (checkpoint, dataset, architecture)."""
    from estimator.architectures import normalize
    from tests.helpers import random_state_dict, write_safetensors
    from tests.jobs.seed import CLASSIFIER, classification_data

    architecture = normalize(CLASSIFIER)
    checkpoint = write_safetensors(tmp_path / "model.safetensors", random_state_dict(architecture, seed=seed))
    x, y = classification_data(n=64, seed=seed)
    dataset = write_safetensors(tmp_path / "data.safetensors", {"x": x, "y": y})
    return checkpoint, dataset, architecture


def submit(client: httpx.Client, checkpoint_id: str, dataset_id: str, **config: Any) -> str:
    """Submit a JOB_CONFIG job (fields overridden by ``config``); returns its id."""
    response = client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id, "dataset_id": dataset_id,
                                             "loss": "cross_entropy", "config": {**JOB_CONFIG, **config}})  # fmt: skip
    assert response.status_code == 202, response.text
    return response.json()["id"]
