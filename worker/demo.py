"""``lambdahat demo``: the whole product in one command, on a laptop, in a few minutes.

1. Starts the embedded service (``lambdahat serve``: SQLite, the local job dispatcher, no Redis) on
   its own data dir, ``<data dir>/demo`` (replaced on each run).
2. Trains a small MLP (64-64-10, ReLU) with plain SGD (lr 0.1, momentum 0.9, batch 64) on
   scikit-learn's handwritten digits (1,797 8x8 images shipped inside scikit-learn: no download),
   and saves a safetensors checkpoint at steps 100, 300, 1000, 3000 and 10000.
3. Uploads the dataset and the checkpoints over HTTP, submits one LLC job per checkpoint, shows live
   progress, and prints training step -> λ̂ ± std (across chains) with the number of warnings.

The LLC config is the estimator's defaults (epsilon from the measured curvature at w*, gamma,
nβ = n / log n) except for the run length: 4 chains, minibatch 128, 8,000 burn-in steps and 2,000
draws. The defaults size burn-in from the mixing time, which here costs minutes per checkpoint on
one core; this shorter config gives the same picture in about 20 s per checkpoint (both sets of
numbers are in docs/jobs.md). The warnings column shows whatever the estimator
flags. ``LAMBDAHAT_DEMO_QUICK=1`` swaps in a much shorter config (a smoke test of the plumbing, not
trustworthy numbers).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARCHITECTURE = {"kind": "mlp", "in_features": 64, "hidden": [64], "out_features": 10, "activation": "relu"}
CHECKPOINT_STEPS = (100, 300, 1000, 3000, 10000)
TRAIN = {"optimizer": "SGD", "lr": 0.1, "momentum": 0.9, "batch_size": 64, "seed": 0}
LLC_CONFIG: dict[str, Any] = {"num_chains": 4, "seed": 0, "batch_size": 128, "num_burnin_steps": 8000,
                              "num_draws": 2000}
QUICK_LLC_CONFIG: dict[str, Any] = {"num_chains": 2, "seed": 0, "num_draws": 100, "num_burnin_steps": 100,
                                    "batch_size": 256}
COLLECTION = "demo-digits-mlp"
MARKER = ".lambdahat-demo"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Snapshot:
    step: int
    path: Path
    train_loss: float
    train_accuracy: float


_STARTED = time.monotonic()


def _say(console: Any, message: str) -> None:
    console.print(f"  [dim]{time.monotonic() - _STARTED:6.1f} s[/dim]  {message}")


def run_demo(port: int = 8765) -> None:
    from rich.console import Console

    global _STARTED
    console = Console()
    started = _STARTED = time.monotonic()
    quick = os.environ.get("LAMBDAHAT_DEMO_QUICK", "") not in ("", "0")
    llc_config = QUICK_LLC_CONFIG if quick else LLC_CONFIG
    if not _port_free(port):
        console.print(f"[red]port {port} is in use[/red]: run `lambdahat demo --port OTHER_PORT`")
        raise SystemExit(2)

    from backend.settings import Settings

    demo_dir = _fresh_demo_dir(Settings().data_dir / "demo")
    console.print(f"[bold]lambdahat demo[/bold]  (data dir {demo_dir})")
    server = _start_server(demo_dir, port)
    try:
        _wait_healthy(server, port, demo_dir, console)
        _say(console, f"embedded service up at http://127.0.0.1:{port}")
        with tempfile.TemporaryDirectory(prefix="lambdahat-demo-") as scratch:
            snapshots, (x, y) = _train(Path(scratch), console)
            rows = _score(port, demo_dir, snapshots, x, y, llc_config, console)
        _report(console, rows, port, demo_dir, llc_config, quick, time.monotonic() - started)
    finally:
        _stop_server(server)


# -- the service -------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _fresh_demo_dir(path: Path) -> Path:
    """The demo's own data dir, emptied first (only if an earlier demo created it)."""
    if path.exists():
        if not (path / MARKER).exists():
            raise SystemExit(f"{path} exists and was not created by `lambdahat demo`; move it away first")
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)
    (path / MARKER).write_text("created by `lambdahat demo`; deleted by the next demo run\n")
    return path


def _start_server(demo_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAHAT_")}
    env["LAMBDAHAT_DATA_DIR"] = str(demo_dir)
    env["LAMBDAHAT_EMBEDDED_MAX_CONCURRENT_JOBS"] = str(max(1, min(2, os.cpu_count() or 1)))
    env["LAMBDAHAT_HEARTBEAT_INTERVAL"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    log = open(demo_dir / "server.log", "ab")  # noqa: SIM115 - owned by the server process
    return subprocess.Popen([sys.executable, "-m", "ops.cli", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                            start_new_session=True)


def _wait_healthy(server: subprocess.Popen, port: int, demo_dir: Path, console: Any) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = (demo_dir / "server.log").read_text(errors="replace")[-2000:]
            console.print(f"[red]the server exited ({server.returncode}):[/red]\n{tail}")
            raise SystemExit(1)
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not come up within 60 s; see {demo_dir / 'server.log'}")


def _stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)  # graceful: the dispatcher stops its job processes
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# -- training ------------------------------------------------------------------------------------


def _train(directory: Path, console: Any) -> tuple[list[Snapshot], tuple[Any, Any]]:
    import torch
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    from estimator.architectures import build_model

    t0 = time.monotonic()
    # A 64-64-10 MLP gains nothing from intra-op threads; several would fight the job processes for cores.
    torch.set_num_threads(1)
    torch.manual_seed(TRAIN["seed"])
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)  # pixels 0..16 -> 0..1
    y = torch.tensor(digits.target, dtype=torch.int64)
    model = build_model(ARCHITECTURE)
    optimizer = torch.optim.SGD(model.parameters(), lr=TRAIN["lr"], momentum=TRAIN["momentum"])
    batches = torch.Generator().manual_seed(TRAIN["seed"])
    snapshots = []
    for step in range(1, max(CHECKPOINT_STEPS) + 1):
        index = torch.randint(0, len(x), (TRAIN["batch_size"],), generator=batches)
        loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in CHECKPOINT_STEPS:
            with torch.no_grad():
                logits = model(x)
                full_loss = torch.nn.functional.cross_entropy(logits, y).item()
                accuracy = (logits.argmax(1) == y).float().mean().item()
            path = directory / f"step-{step}.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
            snapshots.append(Snapshot(step, path, full_loss, accuracy))
    _say(console, f"trained a 64-64-10 MLP on {len(x)} digits for {max(CHECKPOINT_STEPS)} SGD steps "
                  f"({time.monotonic() - t0:.1f} s); {len(snapshots)} checkpoints")
    return snapshots, (x, y)


# -- scoring through the API ---------------------------------------------------------------------


def _score(port: int, demo_dir: Path, snapshots: list[Snapshot], x: Any, y: Any, llc_config: dict[str, Any],
           console: Any) -> list[dict[str, Any]]:
    import json

    import httpx
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from safetensors.torch import save_file

    key = (demo_dir / "api_key").read_text().strip()
    dataset_path = demo_dir / "digits.safetensors"
    save_file({"x": x.contiguous(), "y": y.contiguous()}, str(dataset_path))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client:
        with open(dataset_path, "rb") as f:
            dataset = _ok(client.post("/v1/datasets", files={"file": ("digits.safetensors", f)},
                                      data={"name": "sklearn digits (1797 x 64)"}))
        jobs: list[tuple[Snapshot, str]] = []
        for snap in snapshots:
            with open(snap.path, "rb") as f:
                checkpoint = _ok(client.post(
                    "/v1/checkpoints", files={"file": (snap.path.name, f)},
                    data={"architecture": json.dumps(ARCHITECTURE), "collection": COLLECTION,
                          "step": str(snap.step), "name": f"digits-mlp step {snap.step}"}))
            job = _ok(client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"],
                                                    "loss": "cross_entropy", "config": llc_config}))
            jobs.append((snap, job["id"]))
        _say(console, f"uploaded the dataset and {len(jobs)} checkpoints over HTTP; {len(jobs)} LLC jobs queued")

        finished: dict[str, dict[str, Any]] = {}
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TextColumn("{task.fields[state]}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            tasks = {job_id: progress.add_task(f"  step {snap.step:>5}", total=1.0, state="queued")
                     for snap, job_id in jobs}
            while len(finished) < len(jobs):
                for _, job_id in jobs:
                    if job_id in finished:
                        continue
                    job = _ok(client.get(f"/v1/jobs/{job_id}"))
                    progress.update(tasks[job_id], completed=job["progress"], state=job["status"])
                    if job["status"] in ("succeeded", "failed", "cancelled"):
                        finished[job_id] = job
                time.sleep(0.5)
    return [{"snapshot": snap, "job": finished[job_id]} for snap, job_id in jobs]


def _ok(response: Any) -> dict[str, Any]:
    if response.status_code >= 400:
        raise SystemExit(f"{response.request.method} {response.request.url.path} answered "
                         f"{response.status_code}: {response.text}")
    return response.json()


def _report(console: Any, rows: list[dict[str, Any]], port: int, demo_dir: Path, llc_config: dict[str, Any],
            quick: bool, elapsed: float) -> None:
    from rich.table import Table

    table = Table(title="λ̂ over training (64-64-10 MLP on sklearn digits)")
    for column in ("step", "train loss", "train acc", "λ̂ ± std", "warnings", "job time"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        snap, job = row["snapshot"], row["job"]
        result = job.get("result") or {}
        if job["status"] == "succeeded":
            estimate = f"{result['llc_mean']:.2f} ± {result['llc_std']:.2f}"
            warnings = str(len(result.get("warnings") or []))
        else:
            estimate, warnings = f"[red]{job['status']}[/red]", "-"
        duration = job["timings"].get("duration_s")
        table.add_row(str(snap.step), f"{snap.train_loss:.4f}", f"{snap.train_accuracy:.3f}", estimate, warnings,
                      f"{duration:.1f} s" if duration else "-")
    console.print(table)
    failed = [r["job"] for r in rows if r["job"]["status"] != "succeeded"]
    for job in failed:
        console.print(f"[red]job {job['id']} {job['status']}:[/red] {job.get('error')}")
    config_text = ", ".join(f"{k}={v}" for k, v in llc_config.items())
    console.print(f"LLC config: {config_text}" + (" (quick mode: NOT trustworthy numbers)" if quick else
                                                  "; everything else (epsilon, gamma, nβ = n/log n) the "
                                                  "estimator's defaults. λ̂ ± std is across chains."))
    first = rows[0]["job"]["id"]
    console.print(f"Total {elapsed:.0f} s. Where to look next:\n"
                  f"  • results persist in {demo_dir}; serve them again with\n"
                  f"      LAMBDAHAT_DATA_DIR={demo_dir} lambdahat serve --port {port}\n"
                  f"    then open http://127.0.0.1:{port}/docs (OpenAPI), with the key in {demo_dir / 'api_key'}\n"
                  f"  • a job: GET /v1/jobs/{first}; its traces: GET /v1/jobs/{first}/traces?format=csv (or json, npz)\n"
                  f"  • warnings (R-hat, ESS, MALA acceptance, plateau) are explained in docs/estimator.md; "
                  f"the job API in docs/jobs.md")
    if failed:
        raise SystemExit(1)
