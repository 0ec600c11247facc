"""Convergence diagnostics of the loss trace, written out (no arviz dependency).

``split_rhat`` and ``bulk_ess`` follow the rank-normalised definitions of Vehtari, Gelman, Simpson,
Carpenter & Bürkner (2021), as implemented by arviz (``rhat(method="rank")``, ``ess(method="bulk")``).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _ranks_average(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a flat array, ties given their average rank (scipy's rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=float)
    # Boundaries of runs of equal values.
    boundaries = np.flatnonzero(np.diff(sorted_values) != 0) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [values.size]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def _z_scale(draws: np.ndarray) -> np.ndarray:
    ranks = _ranks_average(draws.ravel()).reshape(draws.shape)
    quantiles = (ranks - 0.375) / (draws.size + 0.25)
    return torch.special.ndtri(torch.from_numpy(quantiles)).numpy()


def _split_chains(draws: np.ndarray) -> np.ndarray:
    half = draws.shape[1] // 2
    # With an odd number of draws the middle draw is dropped (as arviz does).
    return np.concatenate((draws[:, :half], draws[:, -half:]), axis=0)


def _rhat(draws: np.ndarray) -> float:
    num_samples = draws.shape[1]
    chain_mean = draws.mean(axis=1)
    chain_var = draws.var(axis=1, ddof=1)
    between = num_samples * np.var(chain_mean, ddof=1)
    within = np.mean(chain_var)
    if within == 0:
        return float("nan")
    return float(np.sqrt((between / within + num_samples - 1) / num_samples))


def split_rhat(draws: np.ndarray) -> float:
    """Rank-normalised split R-hat (max of bulk and folded-tail versions). NaN if undefined."""
    draws = np.asarray(draws, dtype=float)
    if draws.ndim != 2 or draws.shape[1] < 4 or not np.all(np.isfinite(draws)):
        return float("nan")
    split = _split_chains(draws)
    bulk = _rhat(_z_scale(split))
    folded = np.abs(draws - np.median(draws))
    tail = _rhat(_z_scale(_split_chains(folded)))
    return float(np.nanmax([bulk, tail])) if not (math.isnan(bulk) and math.isnan(tail)) else float("nan")


def _autocov(draws: np.ndarray) -> np.ndarray:
    n = draws.shape[1]
    size = 1 << (2 * n - 1).bit_length()
    centred = draws - draws.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(spectrum * np.conjugate(spectrum), n=size, axis=1)[:, :n]
    return acov / n


def _ess(draws: np.ndarray) -> float:
    """Effective sample size with Geyer's initial monotone sequence (arviz ``_ess``)."""
    chains, n = draws.shape
    acov = _autocov(draws)
    chain_mean = draws.mean(axis=1)
    mean_var = np.mean(acov[:, 0]) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if chains > 1:
        var_plus += np.var(chain_mean, ddof=1)
    if var_plus <= 0:
        return float("nan")
    rho = np.zeros(n)
    rho_even = 1.0
    rho[0] = rho_even
    rho_odd = 1.0 - (mean_var - np.mean(acov[:, 1])) / var_plus
    rho[1] = rho_odd
    t = 1
    while t < (n - 3) and (rho_even + rho_odd) > 0.0:
        rho_even = 1.0 - (mean_var - np.mean(acov[:, t + 1])) / var_plus
        rho_odd = 1.0 - (mean_var - np.mean(acov[:, t + 2])) / var_plus
        if (rho_even + rho_odd) >= 0:
            rho[t + 1] = rho_even
            rho[t + 2] = rho_odd
        t += 2
    max_t = t - 2
    if rho_even > 0:
        rho[max_t + 1] = rho_even
    t = 1
    while t <= max_t - 2:
        if (rho[t + 1] + rho[t + 2]) > (rho[t - 1] + rho[t]):
            rho[t + 1] = (rho[t - 1] + rho[t]) / 2.0
            rho[t + 2] = rho[t + 1]
        t += 2
    total = chains * n
    tau = -1.0 + 2.0 * np.sum(rho[: max_t + 1]) + np.sum(rho[max_t + 1 : max_t + 2])
    tau = max(tau, 1 / np.log10(total))
    return float(total / tau)


def bulk_ess(draws: np.ndarray) -> float:
    """Rank-normalised bulk effective sample size over all chains. NaN if undefined."""
    draws = np.asarray(draws, dtype=float)
    if draws.ndim != 2 or draws.shape[1] < 4 or not np.all(np.isfinite(draws)):
        return float("nan")
    return _ess(_z_scale(_split_chains(draws)))


def chain_ess(draws: np.ndarray) -> np.ndarray:
    """Plain (not rank-normalised) ESS of each chain on its own, for per-chain standard errors."""
    draws = np.asarray(draws, dtype=float)
    out = np.full(draws.shape[0], float("nan"))
    if draws.shape[1] < 4:
        return out
    for c in range(draws.shape[0]):
        row = draws[c]
        if np.all(np.isfinite(row)) and np.var(row) > 0:
            out[c] = _ess(row[None, :])
    return out
