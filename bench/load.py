"""Load test of a real ``lambdahat serve`` on loopback: concurrent clients mixing job submissions,
status polls, list pages and trace downloads. Prints p50/p99 latency per kind and the throughput;
exits 1 if any request failed (a non-2xx answer or a transport error).

    .venv/bin/python bench/load.py                                  # embedded: SQLite + local dispatcher
    .venv/bin/python bench/load.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/loadtest \\
        --broker-url redis://127.0.0.1:6379/12                      # distributed: + one `lambdahat worker`
    .venv/bin/python bench/load.py --clients 50 --requests 2000 --json bench/out/load.json

The script starts the server (and in distributed mode one worker) in a fresh temporary data dir,
uploads a small checkpoint and dataset, runs a few jobs to completion so there are traces to
download, then lets ``--clients`` threads send ``--requests`` requests in total as fast as they can.
Submitted jobs are small and keep the job runner (a writer to the same database) busy meanwhile.
The PostgreSQL database must exist and be empty (or already migrated); it is migrated, not dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = {"kind": "mlp", "in_features": 4, "hidden": [8], "out_features": 3, "activation": "tanh"}
JOB_CONFIG = {"num_chains": 1, "num_draws": 20, "num_burnin_steps": 5, "epsilon": 1e-3, "gamma": 100.0,
              "batch_size": 32, "device": "cpu"}
# Share of each kind of request in the mix (the rest of the weight goes to status polls).
MIX = {"submit": 0.15, "status": 0.50, "list": 0.10, "traces": 0.25}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_artifacts(directory: Path) -> tuple[Path, Path]:
    """A random-weight checkpoint of ARCHITECTURE and a 64-row classification dataset (safetensors)."""
    rng = np.random.default_rng(0)
    weights = {"0.weight": rng.standard_normal((8, 4)), "0.bias": rng.standard_normal(8),
               "2.weight": rng.standard_normal((3, 8)), "2.bias": rng.standard_normal(3)}
    checkpoint = directory / "model.safetensors"
    save_file({k: (0.1 * v).astype(np.float32) for k, v in weights.items()}, str(checkpoint))
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = np.minimum((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64), 2)
    dataset = directory / "data.safetensors"
    save_file({"x": x, "y": y}, str(dataset))
    return checkpoint, dataset


class Deployment:
    """``lambdahat serve`` (and, with a broker, one ``lambdahat worker``) in their own process groups."""

    def __init__(self, data_dir: Path, database_url: str | None, broker_url: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAHAT_")}
        env.update(LAMBDAHAT_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1", LAMBDAHAT_LOG_LEVEL="WARNING",
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
        if database_url:
            env["LAMBDAHAT_DATABASE_URL"] = database_url
        if broker_url:
            env["LAMBDAHAT_BROKER_URL"] = broker_url
            env["LAMBDAHAT_QUEUE"] = f"lh-load-{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.logs = data_dir.parent
        if database_url and not database_url.startswith("sqlite"):
            subprocess.run([sys.executable, "-m", "ops.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True)
        self._start(["serve", "--port", str(self.port)], env, "serve.log")
        deadline = time.monotonic() + 60
        while not self._healthy():
            if time.monotonic() > deadline or self.processes[0].poll() is not None:
                self.stop()
                raise SystemExit(f"the server did not start; see {self.logs / 'serve.log'}")
            time.sleep(0.2)
        self.key = (data_dir / "api_key").read_text().strip()
        if broker_url:
            self._start(["worker", "--name", "load-worker", "--queues", env["LAMBDAHAT_QUEUE"]], env, "worker.log")

    def _start(self, args: list[str], env: dict[str, str], log_name: str) -> None:
        log = open(self.logs / log_name, "ab")  # noqa: SIM115 - closed with the process
        self.processes.append(subprocess.Popen([sys.executable, "-m", "ops.cli", *args], env=env, cwd=ROOT,
                                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def prepare(client: httpx.Client, workdir: Path, finished_jobs: int) -> dict[str, list[str] | str]:
    """Upload the artifacts and run ``finished_jobs`` jobs to completion (their traces get downloaded)."""
    checkpoint, dataset = write_artifacts(workdir)
    with open(dataset, "rb") as f:
        response = client.post("/v1/datasets", files={"file": ("data.safetensors", f)})
    response.raise_for_status()
    dataset_id = response.json()["id"]
    with open(checkpoint, "rb") as f:
        response = client.post("/v1/checkpoints", files={"file": ("model.safetensors", f)},
                               data={"architecture": json.dumps(ARCHITECTURE)})
    response.raise_for_status()
    checkpoint_id = response.json()["id"]
    body = {"checkpoint_id": checkpoint_id, "dataset_id": dataset_id, "loss": "cross_entropy"}
    job_ids = []
    for seed in range(finished_jobs):
        response = client.post("/v1/jobs", json={**body, "config": {**JOB_CONFIG, "seed": seed}})
        response.raise_for_status()
        job_ids.append(response.json()["id"])
    deadline = time.monotonic() + 300
    for job_id in job_ids:
        while (status := client.get(f"/v1/jobs/{job_id}").json()["status"]) not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} did not finish within 300 s while preparing")
            time.sleep(0.2)
        if status != "succeeded":
            raise SystemExit(f"job {job_id} ended {status} while preparing: {client.get(f'/v1/jobs/{job_id}').text}")
    return {"checkpoint_id": checkpoint_id, "dataset_id": dataset_id, "finished": job_ids}


def run_load(url: str, key: str, prepared: dict, clients: int, requests: int, seed: int = 0) -> dict:
    """``requests`` requests from ``clients`` threads; returns latencies per kind and every failure."""
    rng = random.Random(seed)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=requests)
    next_index = iter(range(requests))
    index_lock = threading.Lock()
    latencies: dict[str, list[float]] = defaultdict(list)
    failures: list[str] = []
    submitted: list[str] = []
    body = {"checkpoint_id": prepared["checkpoint_id"], "dataset_id": prepared["dataset_id"], "loss": "cross_entropy"}

    def one(client: httpx.Client, i: int, kind: str) -> httpx.Response:
        job_ids = prepared["finished"] + submitted[-50:]  # poll recent submissions as well as finished jobs
        job_id = job_ids[i % len(job_ids)]
        if kind == "submit":
            return client.post("/v1/jobs", json={**body, "config": {**JOB_CONFIG, "seed": 1000 + i}})
        if kind == "status":
            return client.get(f"/v1/jobs/{job_id}")
        if kind == "list":
            return client.get("/v1/jobs", params={"limit": 20})
        finished = prepared["finished"]
        return client.get(f"/v1/jobs/{finished[i % len(finished)]}/traces", params={"format": "npz" if i % 2 else "json"})

    def client_loop() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            while True:
                with index_lock:
                    i = next(next_index, None)
                if i is None:
                    return
                kind = kinds[i]
                started = time.perf_counter()
                try:
                    response = client_request(client, i, kind)
                except httpx.HTTPError as exc:
                    failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                latencies[kind].append(time.perf_counter() - started)
                if response.status_code >= 300:
                    failures.append(f"{kind}: HTTP {response.status_code}: {response.text[:200]}")
                elif kind == "submit":
                    submitted.append(response.json()["id"])

    client_request = one
    threads = [threading.Thread(target=client_loop, name=f"client-{n}") for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"latencies": dict(latencies), "failures": failures, "elapsed_s": elapsed, "submitted": submitted}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarise(outcome: dict, requests: int) -> dict:
    every = [v for values in outcome["latencies"].values() for v in values]
    rows = {kind: {"count": len(v), "p50_ms": 1000 * statistics.median(v), "p99_ms": 1000 * percentile(v, 0.99)}
            for kind, v in sorted(outcome["latencies"].items())}
    return {"requests": requests, "errors": len(outcome["failures"]), "elapsed_s": outcome["elapsed_s"],
            "throughput_rps": requests / outcome["elapsed_s"],
            "p50_ms": 1000 * statistics.median(every) if every else None,
            "p99_ms": 1000 * percentile(every, 0.99) if every else None,
            "by_kind": rows, "first_failures": outcome["failures"][:10]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent client threads (default 50)")
    parser.add_argument("--requests", type=int, default=2000, help="requests in total (default 2000)")
    parser.add_argument("--finished-jobs", type=int, default=4, help="jobs run to completion before the load")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: SQLite in the temporary data dir)")
    parser.add_argument("--broker-url", help="Redis URL: distributed mode with one worker (default: embedded)")
    parser.add_argument("--json", type=Path, help="also write the summary to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be at least 1")

    with tempfile.TemporaryDirectory(prefix="lambdahat-load-") as tmp:
        workdir = Path(tmp)
        deployment = Deployment(workdir / "data", args.database_url, args.broker_url)
        try:
            with httpx.Client(base_url=deployment.url, headers={"Authorization": f"Bearer {deployment.key}"},
                              timeout=60) as client:
                prepared = prepare(client, workdir, args.finished_jobs)
                outcome = run_load(deployment.url, deployment.key, prepared, args.clients, args.requests, args.seed)
                # Leave nothing running: cancel what the load submitted (a cancel of a finished job is a no-op).
                for job_id in outcome["submitted"]:
                    client.post(f"/v1/jobs/{job_id}/cancel")
        finally:
            deployment.stop()
            log_tail = (workdir / "serve.log").read_text(errors="replace")[-3000:] if (workdir / "serve.log").exists() else ""

    summary = summarise(outcome, args.requests)
    mode = "distributed (PostgreSQL + Redis + 1 worker)" if args.broker_url else (
        "embedded (PostgreSQL)" if args.database_url else "embedded (SQLite)")
    print(f"lambdahat serve, {mode}: {args.clients} clients, {args.requests} requests in {summary['elapsed_s']:.1f} s")
    print(f"  throughput {summary['throughput_rps']:.0f} req/s, latency p50 {summary['p50_ms']:.1f} ms, "
          f"p99 {summary['p99_ms']:.1f} ms, errors {summary['errors']}")
    for kind, row in summary["by_kind"].items():
        print(f"  {kind:<7} {row['count']:>5} requests  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms")
    for failure in summary["first_failures"]:
        print(f"  FAILED {failure}")
    if summary["errors"]:
        print(f"--- server log (tail)\n{log_tail}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mode": mode, "clients": args.clients, **summary}, indent=2))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
