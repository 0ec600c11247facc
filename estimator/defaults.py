"""The rules that fill in ``None`` fields of LLCConfig (documented in docs/estimator.md)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .llc import _Run

# Samples of the fixed batch on which Hessian-vector products (curvature) are computed.
CURVATURE_SAMPLES = 2048
# Power-iteration steps for the top Hessian eigenvalue at w* (automatic ε only).
POWER_ITERS_AT_W_STAR = 20
# Power-iteration steps per curvature check during warm-up (warm-started from the previous vector).
WARMUP_POWER_ITERS = 8
# Steps between divergence checks / progress reports (one host sync each).
CHECK_EVERY = 32
MAX_BURNIN_RESTARTS = 6
RESTART_SHRINK = 2.0
# During exploration the curvature at the chains is measured at steps 1, 2, 4, ..., then every this many.
CURVATURE_CHECK_PERIOD = 256
# Before the first step: probe the curvature this many exploration steps' diffusion away from w*.
PROBE_STEPS = 16
PROBE_ROUNDS = 8


def nbeta(n: int) -> float:
    """n / log n (the paper's β = 1 / log n)."""
    return n / math.log(n)


# The localisation strength γ when the config leaves it out.
GAMMA = 1.0


def batch_size(n: int) -> int:
    return min(n, 512)


def chunk_size(run: _Run) -> int:
    """All chains in one vmap call unless the per-chain buffers get big (then bound them to ~1 GiB)."""
    bytes_per_chain = 3 * run.P * (8 if run.dtype.itemsize == 8 else 4)
    return max(1, min(run.C, (1 << 30) // max(1, bytes_per_chain)))


# Rademacher probes per Hutchinson estimate of the Hessian trace at the chains (one HVP each).
TRACE_PROBES = 4
# λ̂ below this is treated as this when sizing ε from the bias formula (avoids ε -> 0 near λ̂ = 0).
LLC_FLOOR = 0.1
# ε·a_max/4 at the largest curvature met stays below this in sampling (quadratic instability at 1).
STABILITY_MARGIN = 0.25
# ... and below this in the exploration stage.
EXPLORE_STABILITY = 0.5
# Warm-up with the automatic step size (see _Run._burnin).
EXPLORE_FACTOR = 10.0  # exploration step = 10 × the sampling ε (bias ~10 %, far from instability)
EXPLORE_RELAXATIONS = 0.5  # exploration length in relaxation times 2/(ε_step γ) of the flattest direction
MIN_EXPLORE = 500
MAX_EXPLORE = 20_000
EXPLORE_FRACTION = 0.7  # share of an explicit num_burnin_steps spent exploring
SETTLE_FRACTION = 0.3  # settle stage length relative to exploration
MIN_SETTLE = 300
# Burn-in with a user-given ε: relaxation times of the flattest direction, within bounds.
FIXED_EPS_RELAXATIONS = 1.0
MIN_FIXED_BURNIN = 500
MAX_FIXED_BURNIN = 20_000


def explore_steps(step_epsilon: float, gamma: float) -> int:
    relax = 2.0 / (step_epsilon * gamma)
    return int(min(MAX_EXPLORE, max(MIN_EXPLORE, round(EXPLORE_RELAXATIONS * relax))))


def settle_steps(explore: int) -> int:
    return int(max(MIN_SETTLE, round(SETTLE_FRACTION * explore)))


def fixed_epsilon_burnin(epsilon: float, gamma: float) -> int:
    relax = 2.0 / (epsilon * gamma)
    return int(min(MAX_FIXED_BURNIN, max(MIN_FIXED_BURNIN, round(FIXED_EPS_RELAXATIONS * relax))))


# Draws with the automatic setting: enough for a relative standard error of PRECISION on λ̂,
# predicted from the settle stage (which runs at the sampling ε), within bounds.
PRECISION = 0.01
MIN_DRAWS = 1000
MAX_DRAWS = 10_000
PROVISIONAL_DRAWS = 2000
DRAWS_SAFETY = 2.0  # a short window underestimates the autocorrelation time


def num_draws(run: _Run) -> int:
    from .diagnostics import bulk_ess

    losses = run.settle_losses
    healthy = [c for c in range(run.C) if c not in run.diverged]
    if losses is None or losses.shape[0] < 50 or not healthy:
        return PROVISIONAL_DRAWS
    window = losses[:, healthy].T.cpu().numpy()  # chains × steps
    window = window[:, window.shape[1] // 2 :]  # the settled half
    llc = run.nbeta * (window - run.init_loss)
    estimate = float(llc.mean())
    ess = bulk_ess(llc)
    if not (math.isfinite(ess) and ess > 0 and abs(estimate) > 0):
        return PROVISIONAL_DRAWS
    ess_per_step = ess / window.size  # per chain-step
    needed_ess = float(llc.var()) / (PRECISION * abs(estimate)) ** 2
    steps = DRAWS_SAFETY * needed_ess / (ess_per_step * len(healthy))
    draws = steps / run.config.num_steps_bw_draws
    return int(min(MAX_DRAWS, max(MIN_DRAWS, math.ceil(draws))))


# Draw the next step's noise on a background thread when a chunk's noise is at least this many numbers
# (below that the thread hand-off costs more than the draw). CPU only: on GPU, normal_ is asynchronous.
PREFETCH_MIN_ELEMENTS = 100_000


# Replay the vectorised kernels as traced aten graphs (functional.TracedKernel); False: always eager.
TRACE_KERNELS = True


# chain_mode="auto" on CPU, for a model whose vmapped kernel is not chain-exact: run chains one at a
# time when params x batch rows reach this (compute-bound: grouped convolutions and cache-bound batched
# matmuls are slower than per-chain calls); below it per-call overhead dominates and vmap is faster.
SEQUENTIAL_MIN_WORK = 1 << 24


# device="auto" with CUDA available: use it only when one step of all chains is at least this much
# work (chains x params x batch rows). Below it a GPU step is bound by kernel-launch latency (about
# 1 ms for the ~100 launches of a traced gradient step, measured on an H200), which is slower than
# the same tiny step on one CPU core; above it the GPU wins by a growing factor (docs/benchmarks.md).
CUDA_MIN_WORK = 1 << 22


def step_work(num_chains: int, num_params: int, batch_rows: int) -> int:
    return num_chains * num_params * batch_rows


def prefer_sequential(run: _Run) -> bool:
    return run.device.type == "cpu" and run.P * (run.static_batch or run.batch_size) >= SEQUENTIAL_MIN_WORK


def prefetch_noise(run: _Run) -> bool:
    return run.device.type == "cpu" and run.chunk_size * run.P >= PREFETCH_MIN_ELEMENTS


def mala_every(sampling_steps: int, sampler: str) -> int | None:
    """Measure the MALA acceptance on ~1 % of sampling steps (at most 100, at least one when there
    are 20 or more steps); not for SGNHT, whose proposal is not a Langevin step."""
    if sampler == "sgnht" or sampling_steps < 20:
        return None
    evaluations = min(100, max(1, sampling_steps // 100))
    return sampling_steps // evaluations


def explosion_margin(num_params: int) -> float:
    """nβ (L - L_n(w*)) above this is an explosion (λ̂ is at most ~d/2 for a sane chain)."""
    return 50.0 * num_params + 1e4
