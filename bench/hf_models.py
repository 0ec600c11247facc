"""Hugging Face models as users meet them: per-job overhead and peak memory of a ~10M-parameter model.

    .venv/bin/python bench/hf_models.py                    # both scenarios: ~5 min on 2 cores
    .venv/bin/python bench/hf_models.py --scenarios memory

Scenarios (issue 14's targets; results in docs/benchmarks.md, "Hugging Face models"):

- ``overhead``: a GPT-NeoX model of about 10M parameters (hidden 256, 8 layers, vocabulary 8,192,
  context 128), saved with ``save_pretrained``, sent as tar archives (three checkpoints) to
  ``lambdahat serve`` (embedded), with a token dataset of 256 sequences of 64 tokens. Jobs of 1 chain
  x 2 draws at a given step size (so sampling is a few steps and no curvature pass runs) are
  submitted one after another, each with its own seed. A job's submit-to-result time splits into the
  sampler's steps (curvature + burn-in + sampling, as the job reports them), L_n(w*) with the
  chain-mode probe (a forward pass over the whole dataset and three minibatch gradients: compute that
  grows with the data and the model), and the rest: claiming, loading and building the model,
  storing the result. The first job of a job process imports transformers; later ones find it
  imported. Upload times are printed too: the first upload of a config runs the inspector process.
- ``memory``: the same model in a fresh process, 4 chains in the sequential chain mode, batch 8;
  peak resident memory above the process's resident memory once the model and data are loaded,
  against ``estimator.memory.estimate_memory_bytes`` (what the service checks at submit: the largest
  of sampling, the chain-mode probe and the L_n(w*) evaluation). Run twice: with glibc's default
  malloc, and with ``MALLOC_MMAP_THRESHOLD_=131072`` (large blocks go back to the system on free), to
  show how much of the peak is the allocator's retained heap rather than live tensors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.job_speed import Deployment, _ok, machine  # noqa: E402

MODEL = {"vocab_size": 8192, "hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4,
         "intermediate_size": 1024, "max_position_embeddings": 128}
SEQUENCES, SEQ_LEN, BATCH = 256, 64, 8
JOB_CONFIG = {"num_chains": 1, "num_draws": 2, "num_burnin_steps": 0, "epsilon": 1e-6, "batch_size": BATCH,
              "chain_mode": "sequential", "device": "cpu"}


def write_artifacts(directory: Path, archives: int = 3) -> tuple[list[Path], Path, int]:
    """``archives`` checkpoints of the model (weights perturbed per checkpoint) as save_pretrained tar
    archives, the token dataset as npz, and the parameter count."""
    import numpy as np
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**MODEL))
    paths = []
    for index in range(archives):
        if index:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p), alpha=1e-3)
        folder = directory / ("model" if index == 0 else f"model-{index}")
        model.save_pretrained(folder, safe_serialization=True)
        paths.append(directory / f"{folder.name}.tar")
        with tarfile.open(paths[-1], "w") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name)
    ids = np.random.default_rng(0).integers(0, MODEL["vocab_size"], size=(SEQUENCES, SEQ_LEN), dtype=np.int64)
    dataset = directory / "tokens.npz"
    np.savez(dataset, input_ids=ids)
    return paths, dataset, sum(p.numel() for p in model.parameters())


def run_overhead(work: Path, archives: list[Path], dataset: Path, jobs: int) -> dict:
    (work / "embedded").mkdir()
    deployment = Deployment("embedded", ROOT, work / "embedded")
    rows = []
    try:
        client = deployment.client
        with open(dataset, "rb") as f:
            dataset_id = _ok(client.post("/v1/datasets", files={"file": ("tokens.npz", f)}))["id"]
        uploads = []
        for step, archive in enumerate(archives):
            start = time.perf_counter()
            with open(archive, "rb") as f:
                checkpoint = _ok(client.post("/v1/checkpoints", files={"file": (archive.name, f)},
                                             data={"collection": "bench", "step": str(step)}))
            uploads.append(time.perf_counter() - start)
            print(f"upload {step + 1} of a {archive.stat().st_size / 1e6:.1f} MB archive: {uploads[-1]:.2f} s"
                  + (" (the first checks its config in a fresh inspector process)" if step == 0 else ""), flush=True)
        for seed in range(jobs):
            start = time.perf_counter()
            job = _ok(client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"], "dataset_id": dataset_id,
                                                    "loss": "causal_lm", "config": {**JOB_CONFIG, "seed": seed}}))
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.02)
                job = _ok(client.get(f"/v1/jobs/{job['id']}"))
            wall = time.perf_counter() - start
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job['id']} ended {job['status']}: {job.get('error')}")
            timings = job["result"]["timings"]
            sampling = timings.get("curvature_s", 0) + timings["burnin_s"] + timings["sampling_s"]
            overhead = wall - sampling
            fixed = overhead - timings["init_loss_s"]
            rows.append({"job": seed + 1, "wall_s": wall, "sampling_s": sampling, "overhead_s": overhead,
                         "init_loss_and_probe_s": timings["init_loss_s"], "fixed_overhead_s": fixed})
            print(f"job {seed + 1}: wall {wall:.2f} s = sampling {sampling:.2f} s + L(w*) and the chain-mode probe "
                  f"{timings['init_loss_s']:.2f} s + the rest (claim, load, build, store) {fixed:.2f} s", flush=True)
    finally:
        deployment.stop()
    return {"uploads_s": uploads, "jobs": rows}


MEMORY_PROBE = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from estimator import LLCConfig, estimate_llc
from estimator.memory import activation_bytes_estimate, estimate_memory_bytes, eval_activation_bytes_estimate
from worker.loading import load_model

work, chains = Path(sys.argv[1]), int(sys.argv[2])
config = json.loads((work / "model" / "config.json").read_text())
architecture = {"kind": "hf", "task": "causal_lm", "config": config}
model = load_model(work / "model" / "model.safetensors", "safetensors", architecture)
ids = torch.from_numpy(np.load(work / "tokens.npz")["input_ids"])
def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096
baseline = rss()
result = estimate_llc(model, {"input_ids": ids}, loss="causal_lm", config=LLCConfig(
    num_chains=chains, num_draws=3, num_burnin_steps=0, epsilon=1e-6, batch_size=%(batch)d,
    chain_mode="sequential", seed=0))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
params = result.num_params
activations = activation_bytes_estimate(%(batch)d, ids.shape[1], config["hidden_size"], config["num_hidden_layers"],
                                        config["vocab_size"], 4)
evaluation = eval_activation_bytes_estimate(%(batch)d, chains, ids.shape[1], config["hidden_size"],
                                            config["vocab_size"], 4)
print(json.dumps({"num_params": params, "chains": chains, "baseline_rss": baseline, "peak_rss": peak,
                  "peak_above_baseline": peak - baseline,
                  "estimate": estimate_memory_bytes(params, chains, 4, activations, evaluation),
                  "activations": activations, "eval_activations": evaluation}))
"""


def run_memory(work: Path, chains: int) -> dict:
    probe = MEMORY_PROBE % {"batch": BATCH}
    rows = {}
    for malloc, extra in (("default", {}), ("mmap_threshold_128k", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
        proc = subprocess.run([sys.executable, "-c", probe, str(work), str(chains)], cwd=ROOT, capture_output=True,
                              text=True, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                              "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin", **extra})
        if proc.returncode != 0:
            raise SystemExit(f"memory probe failed: {proc.stderr[-3000:]}")
        row = rows[malloc] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"memory, {chains} sequential chains, {malloc} malloc: peak {row['peak_above_baseline'] / 2**20:.0f} MiB "
              f"above the loaded model and data; estimate {row['estimate'] / 2**20:.0f} MiB (activations "
              f"{row['activations'] / 2**20:.0f} MiB a step, {row['eval_activations'] / 2**20:.0f} MiB in L_n(w*))",
              flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="overhead,memory")
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "hf_models.json")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lambdahat-hf-bench-") as tmp:
        work = Path(tmp)
        archives, dataset, num_params = write_artifacts(work)
        print(f"model: GPT-NeoX {MODEL}, {num_params:,} parameters", flush=True)
        out: dict = {"machine": machine(), "num_params": num_params, "model": MODEL}
        if "overhead" in scenarios:
            out["overhead"] = run_overhead(work, archives, dataset, args.jobs)
        if "memory" in scenarios:
            out["memory"] = run_memory(work, args.chains)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"(rows in {args.json})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
