"""Profile one lambdahat estimate on the speed benchmark's problem: where does the time go?

    .venv/bin/python bench/profile_llc.py --model mlp            # after bench/speed.py has run once
    .venv/bin/python bench/profile_llc.py --model cnn --draws 50 --top 30

Prints (1) the estimator's own phase timings next to the same number of bare training steps measured
in the same process, (2) a cProfile summary by cumulative time, and (3) the torch.profiler operator
table (self CPU time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

from speed_runner import load_problem  # noqa: E402

from estimator import LLCConfig, estimate_llc  # noqa: E402


def bare_steps(model, x, y, steps: int, batch_size: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--chain-mode", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = BENCH_DIR / "out" / f"speed_problem_{args.model}.pt"
    if not problem.exists():
        parser.error(f"{problem} is missing: run bench/speed.py --models {args.model} once first")
    model, x, y = load_problem(str(problem), args.model)
    config = LLCConfig(sampler="sgld", epsilon=1e-4, gamma=100.0, nbeta=256 / math.log(256),
                       num_chains=args.chains, num_draws=args.draws, num_burnin_steps=0,
                       num_steps_bw_draws=1, batch_size=256, seed=0, device="cpu",
                       chain_mode=args.chain_mode)  # fmt: skip
    estimate_llc(model, (x, y), config=config.replace(num_draws=5))  # warm-up
    bare_steps(model, x, y, 10, 256)

    steps = args.chains * args.draws
    bare = bare_steps(model, x, y, steps, 256)
    start = time.perf_counter()
    result = estimate_llc(model, (x, y), config=config)
    ours = time.perf_counter() - start
    print(f"bare: {steps} steps in {bare:.2f} s; lambdahat: {ours:.2f} s ({ours / bare:.2f}x)")
    print("lambdahat timings:", {k: round(v, 3) for k, v in result.timings.items()})
    print("chain mode:", result.diagnostics.get("chain_mode", getattr(result.config, "chain_mode", "?")))

    profiler = cProfile.Profile()
    profiler.enable()
    estimate_llc(model, (x, y), config=config)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(args.top)
    print(stream.getvalue())

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        estimate_llc(model, (x, y), config=config)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
