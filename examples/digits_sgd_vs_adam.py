"""λ̂ over training for SGD and Adam on real digit images, scored as two batches by the service.

The paper's MNIST-style experiment at laptop scale (Lau et al., "The local learning coefficient",
section on optimizers): the same MLP (64-64-10, ReLU, same initialisation) is trained on
scikit-learn's 8x8 handwritten digits (1,797 images shipped inside scikit-learn: no download) once with
plain SGD and once with Adam; checkpoints saved along training are uploaded as two collections and
scored as two batches by an embedded ``lambdahat serve`` (SQLite, local job processes, no Redis);
the server's ``/v1/plots/llc.png`` draws λ̂ ± std against the training step for both on one axis.

    .venv/bin/python -m examples.digits_sgd_vs_adam --out docs/img/digits_sgd_vs_adam.png

``--quick`` runs the same code path with a few steps and a tiny LLC config (a smoke test).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = {"kind": "mlp", "in_features": 64, "hidden": [64], "out_features": 10, "activation": "relu"}
OPTIMIZERS = {"sgd": {"lr": 0.05}, "adam": {"lr": 1e-3}}
CHECKPOINT_STEPS = (30, 100, 300, 1000, 3000, 6000)
TRAIN_BATCH = 64
# As `lambdahat demo` (measured there to agree with the estimator's automatic defaults within the
# chain spread), with a shorter run: epsilon from the curvature at w*, nβ = n / log n.
LLC_CONFIG: dict[str, Any] = {"num_chains": 4, "seed": 0, "batch_size": 128, "num_burnin_steps": 4000,
                              "num_draws": 1000}
QUICK_STEPS = (10, 40)
QUICK_LLC_CONFIG: dict[str, Any] = {"num_chains": 2, "seed": 0, "batch_size": 128, "num_burnin_steps": 20,
                                    "num_draws": 20, "epsilon": 1e-4, "gamma": 100.0}


@dataclass
class Snapshot:
    optimizer: str
    step: int
    path: Path
    train_loss: float
    test_accuracy: float


def load_digits_split(seed: int = 0):  # noqa: ANN201 - (x_train, y_train, x_test, y_test) float32/int64
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel intensities 0..16 -> 0..1
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def train(optimizer_name: str, steps: tuple[int, ...], out_dir: Path, data, seed: int = 0) -> list[Snapshot]:  # noqa: ANN001
    """Train the MLP with one optimizer (same init for all), saving safetensors at ``steps``."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in data)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))  # keys as the "mlp" architecture
    settings = OPTIMIZERS[optimizer_name]
    optimizer = (torch.optim.SGD(model.parameters(), lr=settings["lr"]) if optimizer_name == "sgd"
                 else torch.optim.Adam(model.parameters(), lr=settings["lr"]))
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    snapshots = []
    for step in range(1, max(steps) + 1):
        batch = torch.randint(0, len(x_train), (TRAIN_BATCH,), generator=generator)
        optimizer.zero_grad()
        loss_fn(model(x_train[batch]), y_train[batch]).backward()
        optimizer.step()
        if step in steps:
            with torch.no_grad():
                train_loss = float(loss_fn(model(x_train), y_train))
                accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
            path = out_dir / f"{optimizer_name}_step{step}.safetensors"
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
            snapshots.append(Snapshot(optimizer_name, step, path, train_loss, accuracy))
    return snapshots


# -- the embedded service --------------------------------------------------------------------------


def start_server(data_dir: Path, port: int, concurrency: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAHAT_")}
    env.update(LAMBDAHAT_DATA_DIR=str(data_dir), LAMBDAHAT_EMBEDDED_MAX_CONCURRENT_JOBS=str(concurrency),
               LAMBDAHAT_HEARTBEAT_INTERVAL="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - owned by the server process
    return subprocess.Popen([sys.executable, "-m", "ops.cli", "serve", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_healthy(url: str, process: subprocess.Popen, data_dir: Path, timeout: float = 90.0) -> str:
    """Waits for /healthz; returns the API key the server wrote to its data dir."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {(data_dir / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200 and (data_dir / "api_key").exists():
                return (data_dir / "api_key").read_text().strip()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not start within {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the experiment --------------------------------------------------------------------------------


def score(url: str, api_key: str, snapshots: list[Snapshot], data, llc_config: dict[str, Any],  # noqa: ANN001
          progress: bool) -> tuple[dict[str, list[dict]], bytes]:
    """Upload, run one batch per optimizer, wait; returns the results rows per optimizer and the plot."""
    from lambdahat import Client

    x_train, y_train = data[0], data[1]
    with Client(url, api_key, timeout=300) as cl:
        dataset = cl.upload_dataset({"x": x_train, "y": y_train}, name="sklearn-digits-train")
        for snap in snapshots:
            cl.upload_checkpoint(snap.path, architecture=ARCHITECTURE, collection=f"digits-{snap.optimizer}",
                                 step=snap.step, name=snap.path.stem)
        batches = {name: cl.submit_batch(dataset, loss="cross_entropy", config=llc_config,
                                         collection=f"digits-{name}") for name in OPTIMIZERS}
        rows = {}
        for name, batch in batches.items():
            final = cl.wait(batch, progress=progress)
            if not final.succeeded:
                raise RuntimeError(f"batch {final.id} ({name}) ended {final.status}: {final.counts}")
            rows[name] = cl.results(final)
        png = cl.plot_llc(batches=list(batches.values()))
    return rows, png


def report(rows: dict[str, list[dict]], snapshots: list[Snapshot]) -> str:
    by_key = {(s.optimizer, s.step): s for s in snapshots}
    lines = ["| step | " + " | ".join(f"{n}: λ̂ ± std | {n}: train loss | {n}: test acc" for n in rows) + " |",
             "|---:|" + "---:|---:|---:|" * len(rows)]
    steps = sorted({r["step"] for name_rows in rows.values() for r in name_rows})
    for step in steps:
        cells = []
        for name, name_rows in rows.items():
            row = next(r for r in name_rows if r["step"] == step)
            snap = by_key[(name, step)]
            cells += [f"{row['llc_mean']:.1f} ± {row['llc_std']:.1f}" + (" (!)" if row["warnings"] else ""),
                      f"{snap.train_loss:.3f}", f"{snap.test_accuracy:.3f}"]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("digits_sgd_vs_adam.png"), help="where to write the PNG")
    parser.add_argument("--quick", action="store_true", help="a few steps and a tiny LLC config (smoke test)")
    parser.add_argument("--port", type=int, default=0, help="port for the embedded server (default: a free one)")
    parser.add_argument("--concurrency", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                        help="jobs the embedded server runs at once")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    steps = QUICK_STEPS if args.quick else CHECKPOINT_STEPS
    llc_config = QUICK_LLC_CONFIG if args.quick else LLC_CONFIG
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="lambdahat-example-"))
    data_dir = scratch / "service"
    data_dir.mkdir()
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(data_dir, port, args.concurrency)
    try:
        data = load_digits_split()
        snapshots = [s for name in OPTIMIZERS for s in train(name, steps, scratch, data)]
        print(f"trained SGD and Adam to step {max(steps)} in {time.monotonic() - started:.0f} s", flush=True)
        api_key = wait_healthy(url, server, data_dir)
        rows, png = score(url, api_key, snapshots, data, llc_config, progress=sys.stderr.isatty())
    finally:
        stop_server(server)
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(report(rows, snapshots))
    print(f"\nLLC config: {llc_config}\nplot: {args.out}  ({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
