"""Run ONE contender of the speed benchmark once, in this interpreter, and print one JSON line.

bench/speed.py starts this script in a fresh subprocess per measurement so that peak memory
(``ru_maxrss``) belongs to that contender alone, and so that each devinterp version runs in its own
venv (``bench/.venvs/devinterp-X/bin/python bench/speed_runner.py ...``). It depends only on torch
(plus the contender's library), never on other lambdahat code, except for the ``lambdahat`` contender.

Model weights and data are read from the file bench/speed.py wrote (``torch.save`` of plain tensors,
loaded with ``weights_only=True``), so every contender starts from bit-identical w* and data.

Contenders (all run the same number of sampler steps: chains x (burn-in + draws x steps between draws)):
    bare            plain training steps: minibatch forward + backward + torch.optim.SGD step
    lambdahat       estimator.estimate_llc with an explicit LLCConfig
    devinterp-1.3.2 devinterp.slt.sampler.estimate_learning_coeff_with_summary (default SGLD class)
    devinterp-2.0.1 devinterp.slt.llc.llc (SGMCMC.sgld)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CONTENDERS = ("bare", "lambdahat", "devinterp-1.3.2", "devinterp-2.0.1")


# --- models (shared with bench/speed.py, which imports these builders) -------------------------------


def build_mlp() -> nn.Module:
    """The issue's 64-256-256-10 MLP: 85,002 parameters."""
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def build_cnn() -> nn.Module:
    """A ~1M-parameter CNN for 1x28x28 inputs (952,466 parameters).

    Strided convolutions instead of pooling keep a step cheap on a 2-core CPU; most parameters sit in
    the first dense layer, so per-parameter sampler work (noise, update) is a large share of a step.
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(),   # 16 x 14 x 14
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),  # 32 x 7 x 7
        nn.Flatten(), nn.Linear(32 * 7 * 7, 600), nn.ReLU(), nn.Linear(600, 10),
    )  # fmt: skip


MODELS = {"mlp": build_mlp, "cnn": build_cnn}
INPUT_SHAPES = {"mlp": (64,), "cnn": (1, 28, 28)}


def load_problem(path: str, model_name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    # mmap: tensors are mapped from the file rather than copied through a read buffer, so loading
    # leaves no freed transient that sampling could reuse unseen by the RSS measurement.
    blob = torch.load(path, weights_only=True, mmap=True)
    model = MODELS[model_name]()
    model.load_state_dict(blob["state_dict"])
    return model, blob["x"], blob["y"]


def max_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status ("VmRSS", "VmHWM") in bytes; the lifetime high-water mark
    (``ru_maxrss``) where /proc is unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return max_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak RSS since the last reset_peak_rss() (VmHWM)."""
    return _proc_status_bytes("VmHWM")


def current_rss_bytes() -> int:
    """Resident set size now (VmRSS)."""
    return _proc_status_bytes("VmRSS")


# --- contenders: each runs the protocol once and returns (llc or None, extra info) ----------------------


def run_bare(model, x, y, args, num_draws):
    """Floor: the same number of plain SGD training steps on one model (forward, backward, step)."""
    device = torch.device(args.device)
    total_steps = args.num_chains * (args.num_burnin_steps + num_draws * args.num_steps_bw_draws)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.epsilon)
    x, y = x.to(device), y.to(device)  # no copy when already there (the runner moves both to a GPU)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    n = x.shape[0]
    order = torch.randperm(n, generator=generator, device=device)
    cursor = 0
    for _ in range(total_steps):
        if cursor + args.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator, device=device), 0
        idx = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return None, {}


def run_lambdahat(model, x, y, args, num_draws):
    from estimator import LLCConfig, estimate_llc

    config = LLCConfig(
        sampler="sgld",
        epsilon=args.epsilon,
        gamma=args.gamma,
        nbeta=args.nbeta,
        num_chains=args.num_chains,
        num_draws=num_draws,
        num_burnin_steps=args.num_burnin_steps,
        num_steps_bw_draws=args.num_steps_bw_draws,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        chain_mode=args.chain_mode,
    )
    result = estimate_llc(model, (x, y), loss="cross_entropy", config=config)
    extra = {}
    resolved = getattr(result, "config", None)
    if resolved is not None:
        extra["chain_mode"] = getattr(resolved, "chain_mode", None)
    diagnostics = getattr(result, "diagnostics", None)
    if isinstance(diagnostics, dict):
        extra["diagnostics_keys"] = sorted(diagnostics)
        for key in ("chain_mode", "chain_mode_reason", "mala_acceptance"):
            if key in diagnostics:
                value = diagnostics[key]
                extra[key] = value if isinstance(value, (str, int, float, type(None))) else str(value)
    timings = getattr(result, "timings", None)
    if isinstance(timings, dict):
        extra["timings"] = {k: v for k, v in timings.items() if isinstance(v, (int, float, str))}
    return float(result.llc_mean), extra


def run_devinterp_1(model, x, y, args, num_draws):
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    # The documented way to call 1.3.2: a DataLoader and an evaluate function returning the mean loss.
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)

    def evaluate(model, data):
        inputs, targets = data
        return F.cross_entropy(model(inputs), targets)

    results = estimate_learning_coeff_with_summary(
        model,
        loader,
        evaluate=evaluate,
        sampling_method=SGLD,
        optimizer_kwargs={"lr": args.epsilon, "localization": args.gamma, "nbeta": args.nbeta},
        num_chains=args.num_chains,
        num_draws=num_draws,
        num_burnin_steps=args.num_burnin_steps,
        num_steps_bw_draws=args.num_steps_bw_draws,
        device=torch.device(args.device),
        seed=args.seed,
        verbose=False,
    )
    return float(results["llc/mean"]), {"init_loss": "mean of num_chains minibatch losses (library default)"}


def run_devinterp_2(model, x, y, args, num_draws):
    from datasets import Dataset
    from devinterp.slt.llc import llc

    # 2.0.1 only accepts a HuggingFace Dataset with an integer "input_ids" column and a per-token loss
    # (model, input_ids) -> (batch, seq - 1). For a classifier we store each example as
    # [row index, label] (a "sequence" of length 2 gives one loss position) and look the inputs up.
    rows = torch.stack([torch.arange(x.shape[0]), y], dim=1)
    dataset = Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")
    inputs_on_device = x.to(args.device)

    def per_example_loss(model, input_ids):
        inputs = inputs_on_device[input_ids[:, 0].to(inputs_on_device.device)]
        targets = input_ids[:, 1].to(inputs.device)
        return F.cross_entropy(model(inputs), targets, reduction="none").unsqueeze(1)

    with tempfile.TemporaryDirectory() as tmp:
        result = llc(
            model,
            dataset,
            observables={},
            lr=args.epsilon,
            n_beta=args.nbeta,
            loss_fn=per_example_loss,
            localization=args.gamma,
            num_chains=args.num_chains,
            num_draws=num_draws,
            num_burnin_steps=args.num_burnin_steps,
            num_steps_bw_draws=args.num_steps_bw_draws,
            batch_size=args.batch_size,
            init_seed=args.seed,
            device=args.device,
            output_path=str(Path(tmp) / "samples.zarr"),
        )
        value = float(result["llc_mean"].values)
    return value, {"init_loss": "num_init_loss_batches=32 minibatches per chain (library default)"}


RUNNERS = {
    "bare": run_bare,
    "lambdahat": run_lambdahat,
    "devinterp-1.3.2": run_devinterp_1,
    "devinterp-2.0.1": run_devinterp_2,
}


def library_version(contender: str) -> str | None:
    import importlib.metadata as md

    if contender.startswith("devinterp"):
        return md.version("devinterp")
    if contender == "lambdahat":
        try:
            return md.version("lambdahat")
        except md.PackageNotFoundError:
            return "checkout"
    return None


def warm_up_backend(model, x, y, args) -> None:
    """Bring the data pages in and run two plain training steps on a throwaway copy of the model.

    The first convolution forward/backward makes the CPU backend (oneDNN) JIT its kernels and fill
    primitive caches: ~100 MiB of RSS that no contender owns. Doing it before the memory baseline, the
    same way for every contender, keeps that one-time cost out of every contender's figure.
    """
    import copy

    float(x.float().sum()), float(y.float().sum())  # touch the mmapped data so it is resident
    scratch = copy.deepcopy(model)
    optimizer = torch.optim.SGD(scratch.parameters(), lr=0.0)
    for _ in range(2):
        idx = torch.arange(args.batch_size) % x.shape[0]
        loss = F.cross_entropy(scratch(x[idx].to(args.device)), y[idx].to(args.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    del scratch, optimizer, loss
    synchronize(args.device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contender", required=True, choices=CONTENDERS)
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--problem", required=True, help="file written by bench/speed.py (weights + data)")
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-draws", type=int, default=200)
    parser.add_argument("--num-burnin-steps", type=int, default=0)
    parser.add_argument("--num-steps-bw-draws", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epsilon", type=float, default=1e-4)
    parser.add_argument("--gamma", type=float, default=100.0)
    parser.add_argument("--nbeta", type=float, default=256 / math.log(256))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chain-mode", default="auto", help="lambdahat only: auto, vmap or sequential")
    parser.add_argument("--warmup-draws", type=int, default=5, help="draws of the untimed warm-up call")
    args = parser.parse_args(argv)

    if args.threads:  # 0: torch's default
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    runner = RUNNERS[args.contender]
    model, x, y = load_problem(args.problem, args.model)
    if args.device.startswith("cuda"):
        # Model and data on the GPU before the memory baseline, for every contender alike: a GPU
        # floor that copied each minibatch from host memory would time the copies, not the steps.
        model, x, y = model.to(args.device), x.to(args.device), y.to(args.device)
    # Import the library before the memory baseline so that only sampling shows in the difference.
    if args.contender == "lambdahat":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's estimator/
        import estimator  # noqa: F401
    elif args.contender == "devinterp-1.3.2":
        import devinterp.slt.sampler  # noqa: F401
    elif args.contender == "devinterp-2.0.1":
        import datasets  # noqa: F401
        import devinterp.slt.llc  # noqa: F401
    warm_up_backend(model, x, y, args)

    # Untimed warm-up call on a copy (lazy imports and initialisation, allocator, thread pools); then
    # the peak RSS is reset so that the memory figure is the timed call's own peak above its start.
    import copy

    if args.warmup_draws > 0:
        runner(copy.deepcopy(model), x, y, args, args.warmup_draws)
    synchronize(args.device)
    gc.collect()
    peak_was_reset = reset_peak_rss()
    rss_before = current_rss_bytes()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    start, cpu_start = time.perf_counter(), time.process_time()
    llc_value, extra = runner(model, x, y, args, args.num_draws)
    synchronize(args.device)
    seconds = time.perf_counter() - start
    # CPU time of this process (all its threads): robust to other load on a shared machine, where
    # wall time is not. On an idle machine with one torch thread the two agree.
    cpu_seconds = time.process_time() - cpu_start

    steps = args.num_chains * (args.num_burnin_steps + args.num_draws * args.num_steps_bw_draws)
    report = {
        "contender": args.contender,
        "version": library_version(args.contender),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "model": args.model,
        "params": sum(p.numel() for p in model.parameters()),
        "n": int(x.shape[0]),
        "steps": steps,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "steps_per_s": steps / seconds,
        "llc_mean": llc_value,
        "threads": torch.get_num_threads(),
        "rss_before_bytes": rss_before,
        # max(): the kernel batches RSS accounting, so VmHWM can lag a fresh VmRSS reading by a few pages.
        "rss_peak_bytes": max(peak_rss_bytes(), rss_before) if peak_was_reset else max_rss_bytes(),
        "rss_peak_reset": peak_was_reset,
        **extra,
    }
    if args.device.startswith("cuda"):
        report["cuda_peak_extra_bytes"] = torch.cuda.max_memory_allocated() - cuda_before
    print(json.dumps(report, default=str), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
