"""From a finished (or stopped) run to an ``LLCResult``: estimates, diagnostics and warnings.

Warning codes (each a dict ``{"code", "message", "chain"}``):

- ``diverged``: a chain's loss went non-finite or exploded; it stopped, the others report.
- ``burnin_restart``: warm-up restarted with a smaller ε after a blow-up (informational).
- ``vmap_unavailable``: chains ran sequentially (slower, same numbers).
- ``init_loss_subsample``: n > 2,000,000, so L_n(w*) used a fixed random subsample (stated).
- ``static_batch``: a torch.export module with a fixed batch size forced ``batch_size``.
- ``rhat_high``: split R-hat of the loss trace above ``rhat_threshold``: chains disagree.
- ``ess_low``: bulk ESS of the loss trace below ``min_ess``: the estimate is noisy.
- ``mala_acceptance``: MALA acceptance of the proposals outside ``mala_band``.
- ``negative_estimate``: λ̂ < 0: w* is probably not a local minimum (or the baseline is noisy).
- ``below_init_loss``: a stretch of a chain's trace sits clearly below L_n(w*): the chain found lower loss.
- ``not_plateaued``: the trace is still rising in its last part: more burn-in / draws needed.
- ``stopped``: sampling was stopped by the progress callback; the estimate uses the draws so far.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import tuning
from .config import LLCConfig
from .diagnostics import bulk_ess, chain_ess, split_rhat
from .result import LLCResult


@dataclass(frozen=True)
class RunRecord:
    """What a finished (or stopped) run produced and resolved: everything the report is built from."""

    config: LLCConfig  # as given
    n: int
    num_params: int
    num_chains: int
    nbeta: float
    gamma: float
    batch_size: int
    device: str
    device_reason: str
    chain_mode: str
    chain_mode_reason: str
    chunk_size: int
    init_loss: float
    init_loss_samples: int
    epsilon: float  # the sampling ε
    h_star: float  # top Hessian eigenvalue at w* (NaN with a given ε)
    h_seen: float  # largest top eigenvalue met at the chains
    h_typ: float  # the chains' typical (mean) top eigenvalue
    trace_typ: float | None  # the chains' typical Hessian trace
    llc_warm: float | None  # the running λ̂ of warm-up
    num_draws: int
    num_burnin: int
    explore_steps: int
    settle_steps: int
    burnin_restarts: int
    steps_done: int  # steps per chain, burn-in and sampling
    sample_losses: np.ndarray  # (sampling steps, chains): the loss at every sampling step
    sample_steps_done: int
    mala_sum: np.ndarray  # (chains,) sum of MALA acceptance probabilities
    mala_count: np.ndarray  # (chains,) MALA evaluations
    diverged: Mapping[int, dict[str, Any]]  # chain -> where and how it diverged
    notes: tuple[dict[str, Any], ...]  # warnings raised while running
    timings: Mapping[str, float]
    stopped: bool  # the progress callback stopped the run


def build_report(run: RunRecord) -> LLCResult:
    cfg = run.config
    draws, counts = _draws(run)
    est = _estimates(run, draws, counts)
    mix = _mixing(run, draws, counts, est.healthy)
    warnings: list[dict[str, Any]] = list(run.notes)
    plateau = _plateau_check(mix.healthy_draws, run.nbeta, est.llc_mean)
    dips = _dips_below(draws, counts, est.healthy, run.init_loss, run.nbeta)
    _add_warnings(warnings, run, run.stopped, est.llc_mean, mix.rhat, mix.ess, mix.mala, plateau, dips, est.healthy)
    diagnostics: dict[str, Any] = {
        "split_rhat": mix.rhat,
        "bulk_ess": mix.ess,
        "mala_acceptance": mix.mala,
        "mala_acceptance_per_chain": mix.mala_per_chain,
        "mala_evaluations": int(run.mala_count.sum()),
        "per_chain": _per_chain(run, draws, counts, mix.per_chain_ess, est.llc_per_chain),
        "diverged_chains": sorted(run.diverged),
        "divergences": [run.diverged[c] for c in sorted(run.diverged)],
        "plateau": plateau,
        **_curvature_diagnostics(run),
        "burnin_restarts": run.burnin_restarts,
        "warnings": warnings,
    }
    return LLCResult(
        llc_mean=est.llc_mean,
        llc_std=est.llc_std,
        llc_per_chain=est.llc_per_chain,
        init_loss=run.init_loss,
        loss_trace=draws,
        llc_trace=est.llc_trace,
        nbeta=run.nbeta,
        n=run.n,
        config=_resolved_config(run),
        diagnostics=diagnostics,
        warnings=warnings,
        timings=dict(run.timings),
        chain_mode=run.chain_mode,
        chain_mode_reason=run.chain_mode_reason,
        stopped=run.stopped,
        epsilon=run.epsilon,
        gamma=run.gamma,
        num_params=run.num_params,
        init_loss_samples=run.init_loss_samples,
        extras={
            "device_reason": run.device_reason,
            "epsilon_auto": cfg.epsilon is None,
            "explore_steps": run.explore_steps,
            "settle_steps": run.settle_steps,
            "explore_epsilon": run.epsilon * tuning.EXPLORE_FACTOR if cfg.epsilon is None else None,
        },
    )


def _draws(run: RunRecord) -> tuple[np.ndarray, np.ndarray]:
    """The draws (chains × draws done; NaN from a diverged chain's first bad step) and their counts."""
    losses = run.sample_losses  # (steps, chains)
    draws = losses[: run.sample_steps_done : run.config.num_steps_bw_draws].T.copy()  # (chains, draws done)
    draws = draws[:, : run.num_draws]
    for c, info in run.diverged.items():
        draws[c, info["draws_done"] :] = np.nan
    return draws, np.isfinite(draws).sum(axis=1)


@dataclass(frozen=True)
class _Estimates:
    llc_trace: np.ndarray  # (chains, draws): the running λ̂ of each chain
    llc_per_chain: np.ndarray
    healthy: list[int]  # chains with an estimate
    llc_mean: float
    llc_std: float


def _estimates(run: RunRecord, draws: np.ndarray, counts: np.ndarray) -> _Estimates:
    nbeta, init_loss, C = run.nbeta, run.init_loss, run.num_chains
    with np.errstate(invalid="ignore", divide="ignore"):
        running_mean = np.nancumsum(draws, axis=1) / np.maximum(1, np.cumsum(np.isfinite(draws), axis=1))
    llc_trace = nbeta * (running_mean - init_loss)
    llc_trace[~np.isfinite(draws)] = np.nan
    llc_per_chain = np.full(C, np.nan)
    for c in range(C):
        if c not in run.diverged and counts[c] > 0:
            llc_per_chain[c] = nbeta * (float(np.mean(draws[c, : counts[c]])) - init_loss)
    healthy = [c for c in range(C) if np.isfinite(llc_per_chain[c])]
    values = llc_per_chain[healthy]
    llc_mean = float(values.mean()) if values.size else float("nan")
    llc_std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return _Estimates(llc_trace, llc_per_chain, healthy, llc_mean, llc_std)


@dataclass(frozen=True)
class _Mixing:
    healthy_draws: np.ndarray  # the healthy chains' common stretch of draws
    rhat: float
    ess: float
    per_chain_ess: np.ndarray
    mala_per_chain: np.ndarray
    mala: float  # mean over the healthy chains


def _mixing(run: RunRecord, draws: np.ndarray, counts: np.ndarray, healthy: list[int]) -> _Mixing:
    """Mixing diagnostics on the healthy chains' common stretch of draws, and the MALA acceptance."""
    common = int(counts[healthy].min()) if healthy else 0
    healthy_draws = draws[healthy, :common] if healthy else np.zeros((0, 0))
    rhat = split_rhat(healthy_draws) if common >= 4 else float("nan")
    ess = bulk_ess(healthy_draws) if common >= 4 else float("nan")
    per_chain_ess = chain_ess(draws[:, : max(common, 0)]) if common >= 4 else np.full(run.num_chains, np.nan)
    mala_count, mala_sum = run.mala_count, run.mala_sum
    with np.errstate(invalid="ignore", divide="ignore"):
        mala_per_chain = np.where(mala_count > 0, mala_sum / np.maximum(mala_count, 1), np.nan)
    mala_healthy = mala_per_chain[healthy] if healthy else np.array([])
    mala = float(np.nanmean(mala_healthy)) if np.any(np.isfinite(mala_healthy)) else float("nan")
    return _Mixing(healthy_draws, rhat, ess, per_chain_ess, mala_per_chain, mala)


def _per_chain(run: RunRecord, draws, counts, per_chain_ess, llc_per_chain) -> list[dict[str, Any]]:
    return [
        {
            "chain": c,
            "draws": int(counts[c]),
            "mean_loss": float(np.mean(draws[c, : counts[c]])) if counts[c] else float("nan"),
            "var_loss": float(np.var(draws[c, : counts[c]], ddof=1)) if counts[c] > 1 else float("nan"),
            "ess": float(per_chain_ess[c]) if c < len(per_chain_ess) else float("nan"),
            "llc": float(llc_per_chain[c]),
            "diverged": c in run.diverged,
        }
        for c in range(run.num_chains)
    ]


def _curvature_diagnostics(run: RunRecord) -> dict[str, Any]:
    # Curvature facts exist only with the automatic ε (a given ε skips the Hessian passes).
    auto = run.config.epsilon is None
    return {
        "top_hessian_eigenvalue_at_w_star": run.h_star,
        "top_hessian_eigenvalue_seen": run.h_seen if auto else None,
        "top_hessian_eigenvalue_typical": run.h_typ if auto else None,
        "hessian_trace_typical": run.trace_typ,
        "warmup_llc": run.llc_warm,
        "predicted_relative_bias": (
            tuning.predicted_relative_bias(run.epsilon, run.nbeta, run.trace_typ, run.llc_warm)
            if run.trace_typ is not None and run.llc_warm is not None
            else None
        ),
        "bias_factor_typical": tuning.bias_factor(run.epsilon, run.nbeta * run.h_typ + run.gamma) if auto else None,
        "bias_factor_worst": tuning.bias_factor(run.epsilon, run.nbeta * run.h_seen + run.gamma) if auto else None,
    }


def _resolved_config(run: RunRecord) -> LLCConfig:
    """The config with every automatic choice filled in."""
    return run.config.replace(
        epsilon=run.epsilon,
        gamma=run.gamma,
        nbeta=run.nbeta,
        num_draws=run.num_draws,
        num_burnin_steps=run.num_burnin,
        batch_size=run.batch_size,
        device=run.device,
        chain_mode=run.chain_mode,
        max_chains_per_chunk=run.chunk_size,
    )


def _plateau_check(draws: np.ndarray, nbeta: float, llc_mean: float) -> dict[str, Any]:
    """Is the trace still rising? Compare the last quarter with the third quarter of every chain.

    The difference is averaged over chains; its standard error comes from the spread across
    chains (or, with one chain, from the chain's ESS). Rising means: more than 3 standard errors
    and more than 2 % of λ̂.
    """
    chains, length = draws.shape if draws.ndim == 2 else (0, 0)
    if chains == 0 or length < 16:
        return {"checked": False}
    q = length // 4
    third = draws[:, 2 * q : 3 * q].mean(axis=1)
    last = draws[:, 3 * q :].mean(axis=1)
    rise = nbeta * (last - third)  # per chain, in λ units
    if chains > 1:
        se = float(rise.std(ddof=1) / math.sqrt(chains))
    else:
        ess = chain_ess(draws[:, 2 * q :])[0]
        var = float(np.var(draws[0, 2 * q :], ddof=1))
        se = nbeta * math.sqrt(2 * var / max(ess / 2, 1.0)) if math.isfinite(ess) else float("nan")
    mean_rise = float(rise.mean())
    rising = bool(math.isfinite(se) and mean_rise > 3 * se and mean_rise > 0.02 * abs(llc_mean))
    return {"checked": True, "rise_last_quarter": mean_rise, "rise_se": se, "rising": rising}


def _dips_below(draws, counts, healthy, init_loss: float, nbeta: float) -> list[int]:
    """Chains with a window (a tenth of the draws) whose mean loss is clearly below L_n(w*)."""
    out = []
    for c in healthy:
        row = draws[c, : counts[c]]
        if row.size < 20:
            continue
        width = row.size // 10
        windows = row[: width * 10].reshape(10, width).mean(axis=1)
        ess = chain_ess(row[None, :])[0]
        if not math.isfinite(ess):
            continue
        se_window = math.sqrt(np.var(row, ddof=1) / max(1.0, ess / 10))
        if windows.min() < init_loss - 3 * se_window and nbeta * (init_loss - windows.min()) > 0.05:
            out.append(c)
    return out


def _add_warnings(warnings, run: RunRecord, stopped, llc_mean, rhat, ess, mala, plateau, dips, healthy) -> None:
    cfg = run.config

    def add(code: str, message: str, chain: int | None = None) -> None:
        warnings.append({"code": code, "message": message, "chain": chain})

    if stopped:
        add(
            "stopped",
            f"sampling was stopped after {run.steps_done} steps per chain; the estimate uses the draws so far",
        )
    if not healthy:
        add("no_estimate", "no chain produced a draw, so there is no estimate")
        return
    if math.isfinite(rhat) and rhat > cfg.rhat_threshold and len(healthy) > 1:
        add(
            "rhat_high",
            f"split R-hat of the loss trace is {rhat:.3f} (> {cfg.rhat_threshold}): chains disagree or have not "
            "mixed; run more burn-in/draws or use a smaller gamma-to-curvature ratio",
        )
    if math.isfinite(ess) and ess < cfg.min_ess:
        add(
            "ess_low",
            f"bulk effective sample size of the loss trace is {ess:.0f} (< {cfg.min_ess:g}): the estimate is noisy; "
            "run more draws or chains",
        )
    low, high = cfg.mala_band
    if math.isfinite(mala) and not low <= mala < high:
        hint = (
            "the step size is too large for the local curvature; lower epsilon"
            if mala < low
            else "the step size is so small that the chain barely moves; raise epsilon or run longer"
        )
        add(
            "mala_acceptance",
            f"MALA acceptance of the SGLD proposals is {mala:.3f}, outside [{low}, {high}]: {hint}",
        )
    if math.isfinite(llc_mean) and llc_mean < 0:
        add(
            "negative_estimate",
            f"the estimate is negative ({llc_mean:.4g}): w* is probably not a local minimum (the sampler finds "
            "lower loss nearby); train longer or check the loss and data",
        )
    for c in dips:
        add(
            "below_init_loss",
            f"chain {c}'s loss trace dips clearly below L_n(w*) = {run.init_loss:.6g}: w* is not a local minimum "
            "of the loss; train longer before estimating",
            chain=c,
        )
    if plateau.get("rising"):
        add(
            "not_plateaued",
            f"the loss trace is still rising in its last quarter (by {plateau['rise_last_quarter']:.3g} in λ units, "
            f"{plateau['rise_last_quarter'] / max(abs(llc_mean), 1e-12):.1%} of λ̂): increase num_burnin_steps and num_draws",
        )
