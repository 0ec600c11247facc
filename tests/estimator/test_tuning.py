"""The tuning rules of estimator/tuning.py, as functions of plain numbers (no model, no run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimator import tuning


def test_sampling_epsilon_isotropic_rule_and_stability_cap():
    nbeta, gamma, target = 100.0, 1.0, 0.01
    t = target / (1 + target)
    # Before warm-up has a trace: ε = 4 t / (nβ h_typ + γ), as long as it is stable at h_max.
    eps = tuning.sampling_epsilon(2.0, 2.0, nbeta, gamma, target)
    assert eps == pytest.approx(4 * t / (nbeta * 2.0 + gamma))
    # A much larger curvature met somewhere caps ε at ε (nβ h_max + γ) / 4 = STABILITY_MARGIN.
    capped = tuning.sampling_epsilon(2.0, 1e4, nbeta, gamma, target)
    assert capped == pytest.approx(4 * tuning.STABILITY_MARGIN / (nbeta * 1e4 + gamma))
    assert capped < eps
    # Negative curvature counts as flat.
    assert tuning.sampling_epsilon(-5.0, -5.0, nbeta, gamma, target) == pytest.approx(4 * t / gamma)


def test_sampling_epsilon_trace_rule():
    nbeta, gamma, target = 100.0, 1.0, 0.01
    t = target / (1 + target)
    eps = tuning.sampling_epsilon(0.5, 0.5, nbeta, gamma, target, trace_typ=3.0, llc_warm=2.0)
    assert eps == pytest.approx(8 * t * 2.0 / (nbeta * 3.0))
    # λ̂ near zero is floored, and the trace is at least the top eigenvalue.
    floored = tuning.sampling_epsilon(0.5, 0.5, nbeta, gamma, target, trace_typ=0.1, llc_warm=0.0)
    assert floored == pytest.approx(8 * t * tuning.LLC_FLOOR / (nbeta * 0.5))
    # No usable trace: the isotropic rule.
    flat = tuning.sampling_epsilon(0.0, 0.0, nbeta, gamma, target, trace_typ=0.0, llc_warm=1.0)
    assert flat == pytest.approx(min(4 * t / gamma, 4 * tuning.STABILITY_MARGIN / gamma))


def test_explore_epsilon_is_a_multiple_within_the_exploration_stability_limit():
    nbeta, gamma, target = 100.0, 1.0, 0.01
    sampling = tuning.sampling_epsilon(2.0, 2.0, nbeta, gamma, target)
    assert tuning.explore_epsilon(2.0, 2.0, nbeta, gamma, target) == pytest.approx(tuning.EXPLORE_FACTOR * sampling)
    # A large target bias would put 10 × ε past the limit: capped at ε a_max / 4 = EXPLORE_STABILITY.
    explore = tuning.explore_epsilon(2.0, 2.0, nbeta, gamma, 10.0)
    assert explore == pytest.approx(4 * tuning.EXPLORE_STABILITY / (nbeta * 2.0 + gamma))


def test_suggested_epsilon():
    assert tuning.suggested_epsilon(0.1, 5.0, 10.0, 1.0, 0.01, epsilon_given=True) == pytest.approx(0.01)
    assert tuning.suggested_epsilon(0.1, float("nan"), 10.0, 1.0, 0.01, epsilon_given=False) == pytest.approx(0.01)
    by_curvature = 4 * (0.01 / 1.01) / (10.0 * 5.0 + 1.0)
    assert tuning.suggested_epsilon(0.1, 5.0, 10.0, 1.0, 0.01, epsilon_given=False) == pytest.approx(by_curvature)


def test_bias_factor_and_predicted_bias():
    assert tuning.bias_factor(0.1, 20.0) == pytest.approx(2.0)
    assert tuning.bias_factor(0.4, 10.0) == math.inf
    assert tuning.predicted_relative_bias(1e-3, 100.0, 8.0, 1.0) == pytest.approx(0.1)
    assert tuning.predicted_relative_bias(1e-3, 100.0, 8.0, 0.0) == pytest.approx(1.0)  # λ̂ floored at 0.1


def test_recent_mean_uses_the_later_half():
    assert tuning.recent_mean([(1, 10.0), (6, 2.0), (9, 4.0)], 10) == pytest.approx(3.0)
    assert tuning.recent_mean([(1, 10.0), (2, 2.0)], 10) == pytest.approx(6.0)  # none recent: all


def test_curvature_schedule_and_probe_fixed_point():
    assert [tuning.next_curvature_check(s) for s in (1, 2, 128, 256, 512)] == [2, 4, 256, 512, 768]
    assert tuning.probe_radius(0.25) == pytest.approx(math.sqrt(0.25 * tuning.PROBE_STEPS))
    assert tuning.next_probe_curvature(2.0, 2.5, 1.0) == (2.5, True)  # consistent: stop
    h, done = tuning.next_probe_curvature(1.0, 100.0, 1.0)  # far steeper: geometric damping
    assert not done and h == pytest.approx(10.0)
    assert tuning.next_probe_curvature(0.0, 3.0, 0.0) == (3.0, False)  # flat at w*: take what was found


def test_burnin_lengths():
    assert tuning.explore_steps(1e-9, 1.0) == tuning.MAX_EXPLORE
    assert tuning.explore_steps(1.0, 1.0) == tuning.MIN_EXPLORE
    assert tuning.explore_steps(1e-3, 1.0) == round(tuning.EXPLORE_RELAXATIONS * 2000)
    assert tuning.settle_steps(10_000) == 3000 and tuning.settle_steps(10) == tuning.MIN_SETTLE
    assert tuning.fixed_epsilon_burnin(1e-3, 1.0) == 2000
    # An explicit num_burnin_steps is split 70 / 30 between exploring and settling.
    assert tuning.explore_length(1000, 1e-3, 1.0) == 700
    assert tuning.settle_length(1000, 700, False, 1e-3, 1.0) == 300
    assert tuning.explore_length(None, 1e-3, 1.0) == tuning.explore_steps(1e-3, 1.0)
    assert tuning.settle_length(None, 2000, False, 1e-3, 1.0) == tuning.settle_steps(2000)
    assert tuning.settle_length(None, 0, True, 1e-3, 1.0) == tuning.fixed_epsilon_burnin(1e-3, 1.0)


def test_sampling_steps_and_mala_schedule():
    assert tuning.sampling_steps(0, 5) == 0
    assert tuning.sampling_steps(1, 5) == 1
    assert tuning.sampling_steps(100, 3) == 298
    assert tuning.mala_every(10_000, "sgnht") is None
    assert tuning.mala_every(19, "sgld") is None
    assert tuning.mala_every(20, "sgld") == 20
    assert tuning.mala_every(50_000, "sgld") == 500  # at most 100 evaluations


def test_num_draws_from_the_settle_stage():
    assert tuning.num_draws(None, 10.0, 0.0, 1) == tuning.PROVISIONAL_DRAWS
    assert tuning.num_draws(np.ones((49, 2)), 10.0, 0.0, 1) == tuning.PROVISIONAL_DRAWS
    assert tuning.num_draws(np.ones((100, 0)), 10.0, 0.0, 1) == tuning.PROVISIONAL_DRAWS
    rng = np.random.default_rng(0)
    # Independent draws of relative sd 1 over 4 chains: 2 × 1 / 0.01² / 4 = 5,000 draws per chain.
    independent = 1.0 + rng.normal(size=(400, 4))
    assert tuning.num_draws(independent, 10.0, 0.0, 1) == pytest.approx(5000, rel=0.2)
    assert tuning.num_draws(independent, 10.0, 0.0, 2) == pytest.approx(2500, rel=0.2)
    assert tuning.num_draws(1.0 + 3 * rng.normal(size=(400, 4)), 10.0, 0.0, 1) == tuning.MAX_DRAWS
    quiet = 1.0 + 1e-4 * rng.normal(size=(400, 4))
    assert tuning.num_draws(quiet, 10.0, 0.0, 1) == tuning.MIN_DRAWS


def test_how_chains_run():
    assert tuning.chunk_size(8, 100, 4) == 8
    assert tuning.chunk_size(8, 1 << 28, 8) == 1  # 6 GiB per chain: one at a time
    assert tuning.prefer_sequential("cpu", 1 << 12, 1 << 12)
    assert not tuning.prefer_sequential("cuda", 1 << 12, 1 << 12)
    assert not tuning.prefer_sequential("cpu", 1 << 10, 1 << 10)
    assert tuning.prefetch_noise("cpu", 4, tuning.PREFETCH_MIN_ELEMENTS // 4)
    assert not tuning.prefetch_noise("cpu", 1, 10)
    assert tuning.step_work(2, 3, 4) == 24
    assert tuning.nbeta(math.e**2) == pytest.approx(math.e**2 / 2)
    assert tuning.batch_size(100) == 100 and tuning.batch_size(10_000) == 512
