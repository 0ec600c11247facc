"""Jobs as users meet them: the service's submit-to-result time against the library call it wraps.

    .venv/bin/python bench/job_speed.py                         # every scenario and mode: ~10 min on 2 cores
    .venv/bin/python bench/job_speed.py --scenarios batch --modes embedded
    .venv/bin/python bench/job_speed.py --compare-ref b6591bf   # the same, and the service of an older
                                                                # commit beside it (a git worktree)

Scenarios (issue 12's protocol; results in docs/benchmarks.md, "Jobs"):

- ``single``: one job on a 16-64-4 MLP, 4 chains x 3,000 steps, on an idle machine and with one core
  kept busy by another process (``python -c "while True: pass"``, started before anything else).
  Contenders: the library call in a fresh Python process (``estimate_llc`` timed alone, the model
  already loaded; the first call, and a second one on the same model, warm) with one torch thread
  and with torch's default; a job of ``lambdahat serve``
  (embedded: SQLite, the local dispatcher); a job of ``lambdahat serve`` + one ``lambdahat worker``
  (Celery on Redis, PostgreSQL). A job's time is from the POST to the moment the client sees it
  succeeded (polling every 50 ms), on a server that is already up, as a user meets it.
- ``batch``: 20 checkpoints of the 16-64-4 MLP, 2 chains x 200 steps each, as one batch over their
  collection. Per-job overhead = batch wall time / 20 - the library call on the same checkpoints in
  a warm process (one thread, median of the 20 calls after one warm-up call).

Every service run gets a fresh data directory (and PostgreSQL database), so nothing is reused from an
earlier run. ``--compare-ref`` runs the service contenders again from a worktree of another commit
with the same virtual environment, once each (``--compare-repeats``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = {"kind": "mlp", "in_features": 16, "hidden": [64], "out_features": 4, "activation": "relu"}
N = 2000
SINGLE_CONFIG = {"num_chains": 4, "num_draws": 3000, "num_burnin_steps": 0, "epsilon": 1e-4, "gamma": 100.0,
                 "batch_size": 64, "seed": 0, "device": "cpu"}
BATCH_CONFIG = {"num_chains": 2, "num_draws": 200, "num_burnin_steps": 0, "epsilon": 1e-4, "gamma": 100.0,
                "batch_size": 64, "seed": 0, "device": "cpu"}
BATCH_SIZE = 20
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


# -- artifacts -------------------------------------------------------------------------------------

def write_artifacts(directory: Path, checkpoints: int) -> tuple[Path, list[Path]]:
    """The dataset and ``checkpoints`` checkpoints of one short Adam run (safetensors files)."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    teacher = torch.randn(16, 4)
    x = torch.randn(N, 16)
    y = (x @ teacher + 0.5 * torch.randn(N, 4)).argmax(dim=1)
    dataset = directory / "data.safetensors"
    save_file({"x": x, "y": y}, str(dataset))
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    paths = []
    for step in range(1, 10 * checkpoints + 1):
        idx = torch.randint(0, N, (64,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            path = directory / f"step_{step:05d}.safetensors"
            save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
            paths.append(path)
    return dataset, paths


# -- the library call, in a fresh process ---------------------------------------------------------

LIBRARY_SCRIPT = r"""
import json, statistics, sys, time
threads = int(sys.argv[1]); dataset = sys.argv[2]; config = json.loads(sys.argv[3]); paths = sys.argv[5:]
import torch
if threads:
    torch.set_num_threads(threads)
from estimator import LLCConfig, estimate_llc
from worker.loading import load_dataset, load_model
arch = json.loads(sys.argv[4])
data = load_dataset(dataset, "safetensors")
models = [load_model(p, "safetensors", arch) for p in paths]
calls = []
for model in models:
    start = time.perf_counter()
    estimate_llc(model, data, loss="cross_entropy", config=LLCConfig(**config))
    calls.append(time.perf_counter() - start)
print(json.dumps({"calls": calls, "threads": torch.get_num_threads()}))
"""


def library_calls(dataset: Path, paths: list[Path], config: dict, threads: int) -> dict:
    """``estimate_llc`` on each checkpoint in turn, in one fresh process; the times of the calls alone."""
    output = subprocess.run([sys.executable, "-c", LIBRARY_SCRIPT, str(threads), str(dataset), json.dumps(config),
                             json.dumps(ARCHITECTURE), *map(str, paths)], cwd=ROOT, env=_clean_env(ROOT), capture_output=True, text=True,
                            check=False, timeout=3600)
    if output.returncode != 0:
        raise SystemExit(f"the library call failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


# -- a deployment -----------------------------------------------------------------------------------

def _clean_env(root: Path) -> dict[str, str]:
    """The environment a user's shell would give: no LAMBDAHAT_* settings, no thread variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LAMBDAHAT_") and k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(root)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """``lambdahat serve`` (embedded) or ``serve`` + one ``worker`` (celery), from the code at ``root``."""

    def __init__(self, mode: str, root: Path, workdir: Path) -> None:
        self.mode, self.root, self.workdir = mode, root, workdir
        self.processes: list[subprocess.Popen] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir = workdir / "data"
        env = _clean_env(root)
        env.update(LAMBDAHAT_DATA_DIR=str(data_dir))
        self.database = None
        if mode == "celery":
            self.database = f"lh_bench_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
            _postgres(f"CREATE DATABASE {self.database}")
            env.update(LAMBDAHAT_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database}",
                       LAMBDAHAT_BROKER_URL="redis://127.0.0.1:6379/13", LAMBDAHAT_QUEUE=f"lh-bench-{self.port}")
            subprocess.run([sys.executable, "-m", "ops.cli", "db", "upgrade"], env=env, cwd=root, check=True,
                           capture_output=True)
        self.env = env
        self.client: httpx.Client | None = None
        try:
            self._start(["serve", "--port", str(self.port)], "serve.log")
            _wait(self._healthy, 90, "the server")
            self.client = httpx.Client(base_url=self.url, timeout=60, headers={
                "Authorization": f"Bearer {(data_dir / 'api_key').read_text().strip()}"})
            if mode == "celery":
                log = self._start(["worker", "--name", "bench", "--queues", env["LAMBDAHAT_QUEUE"]], "worker.log")
                _wait(lambda: "ready." in log.read_text(errors="replace"), 90, "the worker")
            self.wait_until_warm()
        except BaseException:
            self.stop()
            raise

    def _start(self, args: list[str], log_name: str) -> Path:
        log = self.workdir / log_name
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *args], env=self.env, cwd=self.root, stdin=subprocess.DEVNULL,
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True))  # noqa: SIM115
        return log

    def _healthy(self) -> bool:
        if self.processes[0].poll() is not None:
            raise SystemExit(f"the server exited: {(self.workdir / 'serve.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_until_warm(self, timeout: float = 60) -> None:
        """Until the job processes have warmed up, where this version of the code says so (a user's server
        has been up for a while when they submit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mode == "embedded":
                embedded = self.client.get("/v1/status").json().get("embedded") or {}
                processes = embedded.get("job_processes")
                if processes is None or (processes and all(p["warm"] for p in processes)):
                    return
            else:
                text = (self.workdir / "worker.log").read_text(errors="replace")
                if "pool process warm" in text or "lambdahat.tasks" not in _module_source(self.root, "worker/tasks.py"):
                    return
            time.sleep(0.1)

    def upload(self, dataset: Path, checkpoints: list[Path], collection: str) -> tuple[str, list[str]]:
        with open(dataset, "rb") as f:
            dataset_id = _ok(self.client.post("/v1/datasets", files={"file": ("data.safetensors", f)}))["id"]
        ids = []
        for step, path in enumerate(checkpoints, start=1):
            with open(path, "rb") as f:
                ids.append(_ok(self.client.post("/v1/checkpoints", files={"file": (path.name, f)}, data={
                    "architecture": json.dumps(ARCHITECTURE), "collection": collection, "step": str(step)}))["id"])
        return dataset_id, ids

    def run_job(self, checkpoint_id: str, dataset_id: str, config: dict) -> dict:
        start = time.perf_counter()
        job = _ok(self.client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id, "dataset_id": dataset_id,
                                                     "loss": "cross_entropy", "config": config}))
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.05)
            job = _ok(self.client.get(f"/v1/jobs/{job['id']}"))
        elapsed = time.perf_counter() - start
        if job["status"] != "succeeded":
            raise SystemExit(f"job {job['id']} ended {job['status']}: {job.get('error')}")
        return {"wall_s": elapsed, "run_s": job["timings"]["duration_s"], "llc": job["result"]["llc_mean"],
                "threads": (job["result"].get("timings") or {}).get("threads")}

    def run_batch(self, collection: str, dataset_id: str, config: dict) -> dict:
        start = time.perf_counter()
        batch = _ok(self.client.post("/v1/batches", json={"collection": collection, "dataset_id": dataset_id,
                                                          "loss": "cross_entropy", "config": config}))
        while batch["status"] in ("queued", "running"):
            time.sleep(0.1)
            batch = _ok(self.client.get(f"/v1/batches/{batch['id']}"))
        elapsed = time.perf_counter() - start
        if batch["status"] != "succeeded":
            raise SystemExit(f"batch {batch['id']} ended {batch['status']}: {batch['counts']}")
        results = _ok(self.client.get(f"/v1/batches/{batch['id']}/results"))
        return {"wall_s": elapsed, "llc": [row["llc_mean"] for row in results]}

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.database:
            try:
                import redis

                redis.Redis.from_url("redis://127.0.0.1:6379/13").delete(self.env["LAMBDAHAT_QUEUE"])
            except Exception:  # noqa: BLE001 - best effort
                pass
            _postgres(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")


def _module_source(root: Path, path: str) -> str:
    try:
        return (root / path).read_text()
    except OSError:
        return ""


def _postgres(statement: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(statement))
    engine.dispose()


def _ok(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise SystemExit(f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}")
    return response.json()


def _wait(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


class BusyCore:
    """Another process keeping one core busy, as on a researcher's workstation."""

    def __init__(self, enabled: bool) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if enabled else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


# -- scenarios --------------------------------------------------------------------------------------

def in_fresh_deployment(mode: str, root: Path, work: Path, action) -> dict:  # noqa: ANN001
    """``action(deployment)`` on a deployment of its own (fresh data dir and database), stopped after."""
    deployment = Deployment(mode, root, Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=work)))
    try:
        return action(deployment)
    finally:
        deployment.stop()


def run_single(args: argparse.Namespace, work: Path, dataset: Path, checkpoint: Path, roots: dict[str, Path]) -> list[dict]:
    def one_job(deployment: Deployment) -> dict:
        dataset_id, (checkpoint_id,) = deployment.upload(dataset, [checkpoint], "single")
        return deployment.run_job(checkpoint_id, dataset_id, SINGLE_CONFIG)

    rows = []
    for busy in args.busy:
        spinner = BusyCore(busy == "one")
        try:
            for threads, label in ((1, "library, 1 thread"), (0, "library, default threads")):
                # Two calls in one fresh process: the first as a script's only call, the second warm.
                calls = [library_calls(dataset, [checkpoint, checkpoint], SINGLE_CONFIG, threads)["calls"]
                         for _ in range(args.repeats)]
                rows.append(_row("single", busy, label, "", [first for first, _ in calls]))
                rows.append(_row("single", busy, f"{label}, warm (second call)", "", [second for _, second in calls]))
            for version, root in roots.items():
                repeats = args.repeats if version == "this" else args.compare_repeats
                for mode in args.modes:
                    runs = [in_fresh_deployment(mode, root, work, one_job) for _ in range(repeats)]
                    rows.append(_row("single", busy, f"{mode} job", version, [run["wall_s"] for run in runs],
                                     llc=runs[-1]["llc"], threads=runs[-1]["threads"],
                                     run_s=statistics.median(run["run_s"] for run in runs)))
                    print(_format(rows[-1]), flush=True)
        finally:
            spinner.stop()
    return rows


def run_batch(args: argparse.Namespace, work: Path, dataset: Path, checkpoints: list[Path],
              roots: dict[str, Path]) -> list[dict]:
    def one_batch(deployment: Deployment) -> dict:
        dataset_id, _ = deployment.upload(dataset, checkpoints, "run")
        return deployment.run_batch("run", dataset_id, BATCH_CONFIG)

    library = library_calls(dataset, [checkpoints[0], *checkpoints], BATCH_CONFIG, 1)["calls"][1:]
    warm_call = statistics.median(library)
    rows = [_row("batch", "none", "library, 1 thread, warm (per checkpoint)", "", [warm_call],
                 checkpoints=len(checkpoints))]
    for version, root in roots.items():
        repeats = args.repeats if version == "this" else args.compare_repeats
        for mode in args.modes:
            runs = [in_fresh_deployment(mode, root, work, one_batch) for _ in range(repeats)]
            per_checkpoint = [run["wall_s"] / len(checkpoints) for run in runs]
            rows.append(_row("batch", "none", f"{mode} batch (per checkpoint)", version, per_checkpoint,
                             overhead_s=statistics.median(per_checkpoint) - warm_call,
                             total_s=statistics.median(run["wall_s"] for run in runs)))
            print(_format(rows[-1]), flush=True)
    return rows


def _row(scenario: str, busy: str, contender: str, version: str, times: list[float], **extra: Any) -> dict:
    return {"scenario": scenario, "busy_cores": busy, "contender": contender, "version": version,
            "median_s": statistics.median(times), "each_s": times, **extra}


def _format(row: dict) -> str:
    extra = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                      if k not in ("scenario", "busy_cores", "contender", "version", "median_s", "each_s"))
    each = ", ".join(f"{t:.2f}" for t in row["each_s"])
    version = f" [{row['version']}]" if row["version"] else ""
    return (f"  {row['scenario']:6} busy={row['busy_cores']:4} {row['contender']}{version}: "
            f"{row['median_s']:.3f} s ({each}){'; ' + extra if extra else ''}")


def print_tables(rows: list[dict], compare_ref: str | None) -> None:
    print("\n### single job: 16-64-4 MLP, 4 chains x 3,000 steps (seconds, median)\n")
    print("| busy cores | contender | code | time s (each run) | / library, 1 thread | threads | λ̂ |")
    print("|---|---|---|---:|---:|---:|---:|")
    for busy in sorted({r["busy_cores"] for r in rows if r["scenario"] == "single"}):
        group = [r for r in rows if r["scenario"] == "single" and r["busy_cores"] == busy]
        base = next(r["median_s"] for r in group if r["contender"] == "library, 1 thread")
        for r in group:
            each = ", ".join(f"{t:.2f}" for t in r["each_s"])
            print(f"| {busy} | {r['contender']} | {r['version'] or '-'} | {r['median_s']:.2f} ({each}) | "
                  f"{r['median_s'] / base:.2f}x | {r.get('threads', '-') or '-'} | "
                  f"{r['llc']:.4f} |" if "llc" in r else
                  f"| {busy} | {r['contender']} | - | {r['median_s']:.2f} ({each}) | {r['median_s'] / base:.2f}x | - | - |")
    batch = [r for r in rows if r["scenario"] == "batch"]
    if batch:
        print(f"\n### batch: {batch[0]['checkpoints']} checkpoints of the 16-64-4 MLP, 2 chains x 200 steps each\n")
        print("| contender | code | per checkpoint s (each run) | overhead per job s | batch wall s |")
        print("|---|---|---:|---:|---:|")
        for r in batch:
            each = ", ".join(f"{t:.3f}" for t in r["each_s"])
            overhead = f"{r['overhead_s']:.3f}" if "overhead_s" in r else "-"
            total = f"{r['total_s']:.1f}" if "total_s" in r else "-"
            print(f"| {r['contender']} | {r['version'] or '-'} | {r['median_s']:.3f} ({each}) | {overhead} | {total} |")
    if compare_ref:
        print(f"\ncode: 'this' is the working tree, '{compare_ref}' a worktree of that commit (same venv).")


def machine() -> str:
    from speed import machine_description  # bench/speed.py, beside this script

    return machine_description(argparse.Namespace(device="cpu"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="single,batch")
    parser.add_argument("--modes", default="embedded,celery", help="service contenders: embedded, celery")
    parser.add_argument("--busy", default="none,one", help="single job: none (idle machine), one (one core busy)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=BATCH_SIZE, help="checkpoints in the batch scenario")
    parser.add_argument("--compare-ref", default=None, help="also run the service contenders from this commit")
    parser.add_argument("--compare-repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "job_speed.json")
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    args.busy = [b for b in args.busy.split(",") if b]
    scenarios = [s for s in args.scenarios.split(",") if s]

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lambdahat-job-speed-"))
    roots = {"this": ROOT}
    try:
        if args.compare_ref:
            ref_root = work / "ref"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref_root), args.compare_ref],
                           check=True, capture_output=True)
            roots[args.compare_ref] = ref_root
        print(f"machine: {machine()}", flush=True)
        dataset, checkpoints = write_artifacts(work, args.checkpoints)
        rows: list[dict] = []
        if "single" in scenarios:
            rows += run_single(args, work, dataset, checkpoints[-1], roots)
        if "batch" in scenarios:
            rows += run_batch(args, work, dataset, checkpoints, roots)
        print_tables(rows, args.compare_ref)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
        print(f"\n(total benchmark time {time.perf_counter() - started:.0f} s; rows in {args.json})")
    finally:
        if args.compare_ref:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "ref")],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
