"""Split R-hat and bulk ESS on chains with known behaviour, and the warnings they raise."""

from __future__ import annotations

import numpy as np
import pytest

from estimator.diagnostics import bulk_ess, chain_ess, split_rhat


def ar1(rho: float, chains: int, draws: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((chains, draws))
    out[:, 0] = rng.standard_normal(chains)
    scale = np.sqrt(1 - rho**2)
    for t in range(1, draws):
        out[:, t] = rho * out[:, t - 1] + scale * rng.standard_normal(chains)
    return out


def test_independent_draws():
    draws = np.random.default_rng(0).standard_normal((4, 2000))
    assert split_rhat(draws) == pytest.approx(1.0, abs=0.01)
    assert bulk_ess(draws) == pytest.approx(8000, rel=0.15)


def test_autocorrelated_draws_have_the_ar1_effective_size():
    rho = 0.9
    draws = ar1(rho, chains=4, draws=20000, seed=1)
    expected = draws.size * (1 - rho) / (1 + rho)
    assert bulk_ess(draws) == pytest.approx(expected, rel=0.15)
    np.testing.assert_allclose(chain_ess(draws), expected / 4, rtol=0.25)
    assert split_rhat(draws) < 1.01


def test_chains_that_disagree_have_large_rhat():
    draws = np.random.default_rng(2).standard_normal((4, 500))
    draws[0] += 3.0
    assert split_rhat(draws) > 1.3


def test_a_trending_chain_is_caught_by_splitting():
    draws = np.random.default_rng(3).standard_normal((1, 1000)) + np.linspace(0, 4, 1000)
    assert split_rhat(draws) > 1.3


def test_undefined_cases_are_nan():
    assert np.isnan(split_rhat(np.ones((2, 3))))
    assert np.isnan(bulk_ess(np.array([[1.0, np.nan, 2.0, 3.0, 4.0]])))
    assert np.isnan(split_rhat(np.ones((2, 100))))  # no variance at all


def test_rank_normalisation_makes_bulk_ess_invariant_to_monotone_transforms():
    draws = ar1(0.5, chains=4, draws=1000, seed=4)
    assert bulk_ess(np.exp(draws)) == pytest.approx(bulk_ess(draws), rel=1e-12)
    # R-hat also folds around the median (tail R-hat), which a transform changes only slightly.
    assert split_rhat(np.exp(draws)) == pytest.approx(split_rhat(draws), abs=0.01)
