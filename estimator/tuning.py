"""Tuning rules: how the estimator fills in ``None`` fields of LLCConfig and sizes each part of a run.

Every rule is a function of plain numbers (no model, no driver), so each can be read and tested on
its own; docs/estimator.md explains them and the measurements behind them.
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------- posterior and minibatch

# The localisation strength γ when the config leaves it out.
GAMMA = 1.0


def nbeta(n: int) -> float:
    """n / log n (the paper's β = 1 / log n)."""
    return n / math.log(n)


def batch_size(n: int) -> int:
    return min(n, 512)


# ---------------------------------------------------------------------- step size

# λ̂ below this is treated as this when sizing ε from the bias formula (avoids ε -> 0 near λ̂ = 0).
LLC_FLOOR = 0.1
# ε·a_max/4 at the largest curvature met stays below this in sampling (quadratic instability at 1).
STABILITY_MARGIN = 0.25
# ... and below this in the exploration stage.
EXPLORE_STABILITY = 0.5
# The exploration step is this many times the sampling ε (bias ~10 %, far from instability).
EXPLORE_FACTOR = 10.0
# A blow-up during warm-up divides the step by this and restarts warm-up, at most this many times.
RESTART_SHRINK = 2.0
MAX_BURNIN_RESTARTS = 6


def _bias_fraction(target_bias: float) -> float:
    return target_bias / (1.0 + target_bias)


def sampling_epsilon(
    h_typ: float,
    h_max: float,
    nbeta: float,
    gamma: float,
    target_bias: float,
    trace_typ: float | None = None,
    llc_warm: float | None = None,
) -> float:
    """The sampling step size for the curvature known so far.

    Accuracy, quadratic model: SGLD inflates the variance along an eigen-direction of curvature
    a = nβ h + γ by 1/(1 - εa/4), which adds ≈ ε nβ h / 8 to λ̂. Summed over directions the bias is
    ≈ (ε/8) nβ tr(H), so ε = 8 · target_bias · λ̂ / (nβ tr H) keeps the relative bias at
    target_bias. Once warm-up has measured the chains' mean Hessian trace ``trace_typ`` and a
    running λ̂ ``llc_warm``, that rule is used; before, the isotropic special case
    ε = 4 · target_bias / (nβ h_typ + γ) with the typical top eigenvalue. Stability:
    ε a_max / 4 ≤ STABILITY_MARGIN at the largest curvature ``h_max`` any chain has met.
    """
    t = _bias_fraction(target_bias)
    by_bias = 4.0 * t / (nbeta * max(h_typ, 0.0) + gamma)
    if trace_typ is not None and llc_warm is not None:
        trace = max(trace_typ, h_typ)
        if trace > 0:
            by_bias = 8.0 * t * max(llc_warm, LLC_FLOOR) / (nbeta * trace)
    by_stability = 4.0 * STABILITY_MARGIN / (nbeta * max(h_max, 0.0) + gamma)
    return min(by_bias, by_stability)


def explore_epsilon(
    h_typ: float,
    h_max: float,
    nbeta: float,
    gamma: float,
    target_bias: float,
    trace_typ: float | None = None,
    llc_warm: float | None = None,
) -> float:
    """The exploration step: EXPLORE_FACTOR × the sampling ε, kept clear of the stability limit."""
    by_stability = 4.0 * EXPLORE_STABILITY / (nbeta * max(h_max, 0.0) + gamma)
    sampling = sampling_epsilon(h_typ, h_max, nbeta, gamma, target_bias, trace_typ, llc_warm)
    return min(EXPLORE_FACTOR * sampling, by_stability)


def suggested_epsilon(
    step_epsilon: float, h_seen: float, nbeta: float, gamma: float, target_bias: float, epsilon_given: bool
) -> float:
    """The ε a divergence message suggests: a tenth of the step that diverged, or less where the
    largest curvature met asks for less."""
    if epsilon_given or not h_seen > 0:
        return float(step_epsilon / 10.0)
    by_curvature = 4.0 * _bias_fraction(target_bias) / (nbeta * h_seen + gamma)
    return float(min(step_epsilon / 10.0, by_curvature))


def bias_factor(epsilon: float, a: float) -> float:
    """Quadratic discretisation bias factor 1/(1 - εa/4) at curvature a = nβ h + γ."""
    x = epsilon * a / 4
    return 1.0 / (1.0 - x) if x < 1 else float("inf")


def predicted_relative_bias(epsilon: float, nbeta: float, trace_typ: float, llc_warm: float) -> float:
    """The relative bias (ε/8) nβ tr H / λ̂ that ε implies (see ``sampling_epsilon``)."""
    return epsilon * nbeta * trace_typ / 8 / max(llc_warm, LLC_FLOOR)


def recent_mean(history: list[tuple[int, float]], now: int) -> float:
    """Mean of the values recorded in the later half of the steps so far (all of them if none);
    early warm-up measurements see chains still bunched at w*."""
    recent = [value for step, value in history if step >= now / 2] or [value for _, value in history]
    return sum(recent) / len(recent)


# ---------------------------------------------------------------------- curvature

# Samples of the fixed batch on which Hessian-vector products (curvature) are computed.
CURVATURE_SAMPLES = 2048
# Power-iteration steps for the top Hessian eigenvalue at w* (automatic ε only).
POWER_ITERS_AT_W_STAR = 20
# Power-iteration steps per curvature check during warm-up (warm-started from the previous vector).
WARMUP_POWER_ITERS = 8
# Rademacher probes per Hutchinson estimate of the Hessian trace at the chains (one HVP each).
TRACE_PROBES = 4
# During exploration the curvature at the chains is measured at steps 1, 2, 4, ..., then every this many.
CURVATURE_CHECK_PERIOD = 256
# Before the first step: probe the curvature this many exploration steps' diffusion away from w*.
PROBE_STEPS = 16
PROBE_ROUNDS = 8


def next_curvature_check(step: int) -> int:
    """Doubling at first (the chains spread fastest early), then every CURVATURE_CHECK_PERIOD steps."""
    return min(2 * step, step + CURVATURE_CHECK_PERIOD)


def probe_radius(explore_epsilon: float) -> float:
    """How far PROBE_STEPS exploration steps diffuse a chain from w*."""
    return math.sqrt(explore_epsilon * PROBE_STEPS)


def next_probe_curvature(h: float, found: float, h_star: float) -> tuple[float, bool]:
    """One round of the fixed point h = curvature at the distance the exploration step for h travels.

    That distance shrinks as h grows, so the iteration is damped geometrically. Returns the next h
    and whether ``found`` is consistent with h (the iteration stops there).
    """
    if found <= max(h, h_star) * 1.5 and found >= h / 1.5:
        return max(h, found), True
    return max(h_star, math.sqrt(max(h, 1e-30) * found) if h > 0 else found), False


# ---------------------------------------------------------------------- run lengths

# Steps between divergence checks / progress reports (one host sync each).
CHECK_EVERY = 32
# Warm-up with the automatic step size: exploration length in relaxation times 2/(ε_step γ) of the
# flattest direction, within bounds; the settle stage is a fraction of it.
EXPLORE_RELAXATIONS = 0.5
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


def explore_length(num_burnin_steps: int | None, step_epsilon: float, gamma: float) -> int:
    """Steps of the exploration stage: a share of an explicit burn-in, else from the relaxation time."""
    if num_burnin_steps is not None:
        return round(num_burnin_steps * EXPLORE_FRACTION)
    return explore_steps(step_epsilon, gamma)


def settle_length(
    num_burnin_steps: int | None, explored: int, epsilon_given: bool, epsilon: float, gamma: float
) -> int:
    """Steps of the settle stage (the whole burn-in with a user-given ε), after ``explored`` steps."""
    if num_burnin_steps is not None:
        return num_burnin_steps - explored
    if epsilon_given:
        return fixed_epsilon_burnin(epsilon, gamma)
    return settle_steps(explored)


def sampling_steps(num_draws: int, num_steps_bw_draws: int) -> int:
    """Steps of the sampling phase: draws are the losses at steps 0, bw, 2bw, ..."""
    return (num_draws - 1) * num_steps_bw_draws + 1 if num_draws > 0 else 0


# Draws with the automatic setting: enough for a relative standard error of PRECISION on λ̂,
# predicted from the settle stage (which runs at the sampling ε), within bounds.
PRECISION = 0.01
MIN_DRAWS = 1000
MAX_DRAWS = 10_000
PROVISIONAL_DRAWS = 2000
DRAWS_SAFETY = 2.0  # a short window underestimates the autocorrelation time


def num_draws(settle_losses: np.ndarray | None, nbeta: float, init_loss: float, num_steps_bw_draws: int) -> int:
    """Draws per chain for the target precision, from the settle stage's losses (steps × healthy
    chains); PROVISIONAL_DRAWS when there is too little to go on."""
    from .diagnostics import bulk_ess

    if settle_losses is None or settle_losses.shape[0] < 50 or settle_losses.shape[1] == 0:
        return PROVISIONAL_DRAWS
    window = settle_losses.T  # chains × steps
    window = window[:, window.shape[1] // 2 :]  # the settled half
    llc = nbeta * (window - init_loss)
    estimate = float(llc.mean())
    ess = bulk_ess(llc)
    if not (math.isfinite(ess) and ess > 0 and abs(estimate) > 0):
        return PROVISIONAL_DRAWS
    ess_per_step = ess / window.size  # per chain-step
    needed_ess = float(llc.var()) / (PRECISION * abs(estimate)) ** 2
    steps = DRAWS_SAFETY * needed_ess / (ess_per_step * window.shape[0])
    draws = steps / num_steps_bw_draws
    return int(min(MAX_DRAWS, max(MIN_DRAWS, math.ceil(draws))))


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


# ---------------------------------------------------------------------- how chains run

# Replay the vectorised kernels as traced aten graphs (functional.TracedKernel); False: always eager.
TRACE_KERNELS = True
# chain_mode="auto" on CPU, for a model whose vmapped kernel is not chain-exact: run chains one at a
# time when params x batch rows reach this (compute-bound: grouped convolutions and cache-bound batched
# matmuls are slower than per-chain calls); below it per-call overhead dominates and vmap is faster.
SEQUENTIAL_MIN_WORK = 1 << 24
# device="auto" with CUDA available: use it only when one step of all chains is at least this much
# work (chains x params x batch rows). Below it a GPU step is bound by kernel-launch latency, which
# is slower than the same tiny step on one CPU core (docs/estimator.md, docs/benchmarks.md).
CUDA_MIN_WORK = 1 << 22
# Draw the next step's noise on a background thread when a chunk's noise is at least this many numbers
# (below that the thread hand-off costs more than the draw). CPU only: on GPU, normal_ is asynchronous.
PREFETCH_MIN_ELEMENTS = 100_000


def step_work(num_chains: int, num_params: int, batch_rows: int) -> int:
    return num_chains * num_params * batch_rows


def chunk_size(num_chains: int, num_params: int, itemsize: int) -> int:
    """All chains in one vmap call unless the per-chain buffers get big (then bound them to ~1 GiB)."""
    bytes_per_chain = 3 * num_params * (8 if itemsize == 8 else 4)
    return max(1, min(num_chains, (1 << 30) // max(1, bytes_per_chain)))


def prefer_sequential(device_type: str, num_params: int, batch_rows: int) -> bool:
    return device_type == "cpu" and num_params * batch_rows >= SEQUENTIAL_MIN_WORK


def prefetch_noise(device_type: str, chunk_size: int, num_params: int) -> bool:
    return device_type == "cpu" and chunk_size * num_params >= PREFETCH_MIN_ELEMENTS
