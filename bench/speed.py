"""Speed and memory benchmark: lambdahat vs bare training steps vs devinterp 1.3.2 and 2.0.1.

Everything in one run, with the same model weights, data, epsilon, gamma, nbeta, chains, draws and
batch size for every contender (issue 2, "Speed and memory"):

    .venv/bin/python bench/speed.py                    # both models, all contenders, CPU, 3 repeats
    .venv/bin/python bench/speed.py --models mlp --repeats 5 --threads 2
    .venv/bin/python bench/speed.py --models mlp --repeats 5 --threads 0   # torch's default thread count
    .venv/bin/python bench/speed.py --device cuda      # GPU: adds 1 vs 8 vmapped chains of the MLP

Each measurement is a fresh subprocess (bench/speed_runner.py) so that its peak RSS is its own, and
each devinterp version runs in its own venv under bench/.venvs/ (create them with
``bash bench/setup_devinterp.sh``; a contender whose venv is missing is skipped with a note).
Inside each subprocess the contender is warmed up with a short untimed call, then timed once; the
benchmark repeats that ``--repeats`` times, rotating the order of contenders, and reports the median.

Peak memory: the timed call's peak RSS (VmHWM, reset through /proc/self/clear_refs after the warm-up
call) minus the RSS at its start (model, data and library loaded and warmed up), on CPU; ``torch.cuda.max_memory_allocated`` on GPU. The budget it is compared with is
``(C + 3) * P * 4`` bytes (C chains of P float32 parameters, plus w*, gradient and noise buffers)
plus C times the activations one forward/backward at the batch size saves for backward (measured
with ``torch.autograd.graph.saved_tensors_hooks``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from speed_runner import CONTENDERS, INPUT_SHAPES, MODELS  # noqa: E402

VENVS = BENCH_DIR / ".venvs"
OUT_DIR = BENCH_DIR / "out"

# Targets from issue 2 (2-core CPU): lambdahat time / bare time, devinterp time / lambdahat time.
TARGET_VS_BARE = 1.15
TARGET_SPEEDUP = {"devinterp-1.3.2": 2.0, "devinterp-2.0.1": 4.0}


def contender_python(contender: str) -> Path | None:
    """The interpreter that runs a contender, or None when its venv has not been created."""
    if contender.startswith("devinterp-"):
        python = VENVS / contender / "bin" / "python"
        return python if python.exists() else None
    return Path(sys.executable)


# --- the problem every contender sees ---------------------------------------------------------------


def make_problem(model_name: str, n: int, seed: int, train_steps: int, path: Path) -> dict:
    """Build data and a briefly trained w*, save them for the runners, return facts about the model.

    Data: Gaussian inputs labelled by a random linear teacher (10 classes). w* is trained with Adam for
    ``train_steps`` minibatch steps so that sampling starts near a minimum, as on a real checkpoint.
    """
    generator = torch.Generator().manual_seed(seed)
    shape = INPUT_SHAPES[model_name]
    x = torch.randn((n, *shape), generator=generator)
    teacher = torch.randn(math.prod(shape), 10, generator=generator)
    y = (x.reshape(n, -1) @ teacher).argmax(dim=1)

    torch.manual_seed(seed)
    model = MODELS[model_name]()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(train_steps):
        idx = torch.randint(0, n, (256,), generator=generator)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        del step
    with torch.no_grad():
        train_loss = float(sum(F.cross_entropy(model(xb), yb, reduction="sum") for xb, yb in
                               zip(x.split(1000), y.split(1000), strict=True)) / n)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "x": x, "y": y}, path)
    return {"params": sum(p.numel() for p in model.parameters()), "train_loss": train_loss}


def activation_bytes(model_name: str, batch_size: int) -> int:
    """Bytes autograd saves for backward in one forward pass at ``batch_size`` (distinct storages)."""
    model = MODELS[model_name]()
    x = torch.randn((batch_size, *INPUT_SHAPES[model_name]))
    y = torch.zeros(batch_size, dtype=torch.long)
    parameter_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in parameter_ptrs and ptr != x.untyped_storage().data_ptr():
            seen[ptr] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    del loss
    return sum(seen.values())


# --- running contenders -------------------------------------------------------------------------------


def run_one(contender: str, model_name: str, problem: Path, args, **overrides) -> dict:
    python = contender_python(contender)
    settings = {
        "num-chains": args.num_chains,
        "num-draws": args.draws[model_name],
        "num-burnin-steps": 0,
        "num-steps-bw-draws": 1,
        "batch-size": args.batch_size,
        "epsilon": args.epsilon,
        "gamma": args.gamma,
        "nbeta": args.nbeta,
        "seed": args.seed,
        "threads": args.threads,
        "device": args.device,
        "warmup-draws": args.warmup_draws,
    }
    settings.update({k.replace("_", "-"): v for k, v in overrides.items()})
    command = [str(python), str(BENCH_DIR / "speed_runner.py"), "--contender", contender,
               "--model", model_name, "--problem", str(problem)]  # fmt: skip
    for key, value in settings.items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ)
    # Same thread count everywhere (torch.set_num_threads in the runner; these cover OpenMP/MKL pools).
    # --threads 0: torch's default for every contender, as a user who sets nothing gets it.
    env.update({"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
    if args.threads:
        env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    else:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(name, None)
    env.pop("VIRTUAL_ENV", None)
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{contender} on {model_name} failed (exit {completed.returncode}):\n"
            f"{completed.stderr[-4000:]}\n{completed.stdout[-2000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def median_report(runs: list[dict], clock: str) -> dict:
    """Median over repeats; ``time`` is the median of the clock the ratios use (cpu or wall)."""
    key = "cpu_seconds" if clock == "cpu" else "seconds"
    middle = sorted(runs, key=lambda r: r[key])[len(runs) // 2]
    out = dict(middle)
    out["seconds"] = statistics.median(r["seconds"] for r in runs)
    out["cpu_seconds"] = statistics.median(r["cpu_seconds"] for r in runs)
    out["time"] = out[key]
    out["seconds_all"] = [r["seconds"] for r in runs]
    out["cpu_seconds_all"] = [r["cpu_seconds"] for r in runs]
    out["steps_per_s"] = out["steps"] / out["time"]
    out["rss_extra_bytes"] = statistics.median(r["rss_peak_bytes"] - r["rss_before_bytes"] for r in runs)
    out["rss_peak_bytes"] = max(r["rss_peak_bytes"] for r in runs)
    out["llc_all"] = [r["llc_mean"] for r in runs]
    if "cuda_peak_extra_bytes" in runs[0]:
        out["cuda_peak_extra_bytes"] = max(r["cuda_peak_extra_bytes"] for r in runs)
    return out


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f}"


def format_tables(results: dict, facts: dict, args) -> str:
    lines = []
    for model_name, by_contender in results.items():
        fact = facts[model_name]
        lines.append(
            f"\n### {model_name}: P = {fact['params']:,} parameters, n = {args.n:,}, "
            f"{args.num_chains} chains x {args.draws[model_name]} draws, batch {args.batch_size}, "
            f"epsilon {args.epsilon:g}, gamma {args.gamma:g}, nbeta {args.nbeta:.3f}, "
            f"{args.threads or f'torch default ({os.cpu_count()})'} thread(s), {args.device}, median of {args.repeats}\n"
        )
        lines.append(f"| contender | version | steps | wall s (each run) | CPU s (each run) | steps/s ({args.clock}) "
                     f"| time / bare | devinterp time / lambdahat time | λ̂ (median run) |")  # fmt: skip
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        bare = by_contender.get("bare")
        ours = by_contender.get("lambdahat")
        for contender, r in by_contender.items():
            vs_bare = f"{r['time'] / bare['time']:.2f}x" if bare else "-"
            speedup = "-"
            if ours and contender.startswith("devinterp"):
                speedup = f"{r['time'] / ours['time']:.2f}x"
            llc = "-" if r["llc_mean"] is None else f"{r['llc_mean']:.3f}"
            wall = f"{r['seconds']:.2f} ({', '.join(f'{s:.2f}' for s in r['seconds_all'])})"
            cpu = f"{r['cpu_seconds']:.2f} ({', '.join(f'{s:.2f}' for s in r['cpu_seconds_all'])})"
            lines.append(f"| {contender} | {r['version'] or '-'} | {r['steps']} | {wall} | {cpu} | "
                         f"{r['steps_per_s']:.0f} | {vs_bare} | {speedup} | {llc} |")  # fmt: skip
        lines.append("")
        lines.append(f"Ratios use the median {args.clock} time.")
        # Memory.
        P, C = fact["params"], args.num_chains
        act = fact["activation_bytes"]
        budget = (C + 3) * P * 4 + C * act
        lines.append("")
        lines.append(f"Memory budget (C+3)·P·4 + C·activations = {mib((C + 3) * P * 4)} MiB + "
                     f"{C}×{mib(act)} MiB = **{mib(budget)} MiB**.")  # fmt: skip
        lines.append("")
        key = "cuda_peak_extra_bytes" if args.device.startswith("cuda") else "rss_extra_bytes"
        label = "CUDA max_memory_allocated above start" if key.startswith("cuda") else "peak RSS above baseline"
        lines.append(f"| contender | {label} (MiB) | within budget | minus bare's (MiB) | "
                     "peak RSS of the process (MiB) |")  # fmt: skip
        lines.append("|---|---:|---|---:|---:|")
        for contender, r in by_contender.items():
            extra = r.get(key, 0)
            over_bare = mib(extra - bare.get(key, 0)) if bare else "-"
            lines.append(f"| {contender} | {mib(extra)} | {'yes' if extra <= budget else 'NO'} | {over_bare} | "
                         f"{mib(r['rss_peak_bytes'])} |")  # fmt: skip
        # Targets.
        verdicts = []
        if bare and ours:
            ratio = ours["time"] / bare["time"]
            other = "seconds" if args.clock == "cpu" else "cpu_seconds"
            verdicts.append(f"lambdahat / bare = {ratio:.2f} (target <= {TARGET_VS_BARE}: "
                            f"{'met' if ratio <= TARGET_VS_BARE else 'MISSED'}); by the other clock "
                            f"({'wall' if args.clock == 'cpu' else 'cpu'}): {ours[other] / bare[other]:.2f}")  # fmt: skip
            sampling = ours.get("timings", {}).get("sampling_s")
            if sampling:
                # The sampling loop alone (wall): the whole call minus its fixed costs (L_n(w*) over all
                # n, the chain-mode probe, tracing the kernel), which do not grow with the draws.
                verdicts.append(f"lambdahat sampling loop alone (wall) / bare (wall) = "
                                f"{sampling / bare['seconds']:.2f}")  # fmt: skip
        for contender, target in TARGET_SPEEDUP.items():
            if ours and contender in by_contender:
                ratio = by_contender[contender]["time"] / ours["time"]
                verdicts.append(f"{contender} / lambdahat = {ratio:.2f} (target >= {target}: "
                                f"{'met' if ratio >= target else 'MISSED'})")  # fmt: skip
        if verdicts:
            lines.append("")
            lines.extend(f"- {v}" for v in verdicts)
        if ours:
            details = {k: ours[k] for k in ("chain_mode", "chain_mode_reason", "diagnostics_keys", "timings")
                       if k in ours}  # fmt: skip
            if details:
                lines.append(f"- lambdahat run details: {json.dumps(details, default=str)}")
    return "\n".join(lines)


def chain_scaling(problem: Path, args) -> str:
    """lambdahat with 1 chain vs 8 vmapped chains of the MLP (the GPU target: 8 chains <= 2x one)."""
    rows = []
    for chains in (1, 8):
        runs = [run_one("lambdahat", "mlp", problem, args, num_chains=chains, chain_mode="vmap")
                for _ in range(args.repeats)]  # fmt: skip
        rows.append((chains, median_report(runs, args.clock)))
    one = rows[0][1]["time"]
    out = ["\n### lambdahat chain scaling (MLP, chain_mode=vmap)\n",
           f"| chains | {args.clock} seconds (median) | chain-steps/s | time / 1 chain |", "|---:|---:|---:|---:|"]  # fmt: skip
    for chains, r in rows:
        out.append(f"| {chains} | {r['time']:.2f} | {r['steps_per_s']:.0f} | {r['time'] / one:.2f}x |")
    return "\n".join(out)


def machine_description(args) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, torch {torch.__version__}"
    if args.device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender (median reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every contender; 0: torch's default (one per core)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--n", type=int, default=10_000, help="dataset size")
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--mlp-draws", type=int, default=200)
    parser.add_argument("--cnn-draws", type=int, default=50, help="fewer than the MLP's: a CNN step costs ~25x more")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epsilon", type=float, default=1e-4)
    parser.add_argument("--gamma", type=float, default=100.0)
    parser.add_argument("--nbeta", type=float, default=256 / math.log(256), help="default 256/log(256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=300, help="Adam steps that produce w*")
    parser.add_argument("--warmup-draws", type=int, default=5)
    parser.add_argument("--chain-scaling", action="store_true",
                        help="also time lambdahat with 1 vs 8 vmapped MLP chains (always on with --device cuda)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="time the ratios use: process CPU time (default on CPU: robust to other load on "
                             "a shared machine) or wall time (default on GPU)")  # fmt: skip
    parser.add_argument("--json-out", type=Path, default=OUT_DIR / "speed.json")
    parser.add_argument("--work-dir", type=Path, default=OUT_DIR,
                        help="where the problem files (weights + data) for the runners are written")  # fmt: skip
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for name in args.models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    for name in args.contenders:
        if name not in CONTENDERS:
            parser.error(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch.cuda.is_available() is False here")
    args.draws = {"mlp": args.mlp_draws, "cnn": args.cnn_draws}
    if args.clock is None:
        args.clock = "wall" if args.device.startswith("cuda") else "cpu"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    contenders = []
    for contender in args.contenders:
        if contender_python(contender) is None:
            print(f"note: skipping {contender}: {VENVS / contender} is missing "
                  f"(create it with: bash bench/setup_devinterp.sh)", file=sys.stderr)  # fmt: skip
        else:
            contenders.append(contender)

    print(f"machine: {machine_description(args)}")
    started = time.perf_counter()
    results: dict[str, dict[str, dict]] = {}
    facts: dict[str, dict] = {}
    for model_name in args.models:
        problem = args.work_dir / f"speed_problem_{model_name}.pt"
        facts[model_name] = make_problem(model_name, args.n, args.seed, args.train_steps, problem)
        facts[model_name]["activation_bytes"] = activation_bytes(model_name, args.batch_size)
        runs: dict[str, list[dict]] = {c: [] for c in contenders}
        for repeat in range(args.repeats):
            # Rotate the order so that slow drifts of machine load do not favour one contender.
            order = contenders[repeat % len(contenders):] + contenders[: repeat % len(contenders)]
            for contender in order:
                report = run_one(contender, model_name, problem, args)
                runs[contender].append(report)
                print(f"  {model_name} {contender} repeat {repeat + 1}: {report['seconds']:.2f} s wall, "
                      f"{report['cpu_seconds']:.2f} s CPU, llc {report['llc_mean']}", flush=True)  # fmt: skip
        results[model_name] = {c: median_report(r, args.clock) for c, r in runs.items()}

    text = format_tables(results, facts, args)
    if (args.chain_scaling or args.device.startswith("cuda")) and "mlp" in args.models:
        text += "\n" + chain_scaling(args.work_dir / "speed_problem_mlp.pt", args)
    print(text)
    print(f"\n(total benchmark time {time.perf_counter() - started:.0f} s)")

    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(
        {"machine": machine_description(args), "argv": sys.argv[1:], "facts": facts, "results": results},
        indent=2, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
