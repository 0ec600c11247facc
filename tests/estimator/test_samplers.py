"""Samplers against exact results on a quadratic loss.

For L(w) = 1/2 Σ h_i w_i² (w* = 0) and a full batch, SGLD on each coordinate is an AR(1) chain
    w <- (1 - ε a_i / 2) w + sqrt(ε) ξ,   a_i = nβ h_i + γ,
whose stationary variance is 1 / (a_i (1 - ε a_i / 4)). Hence
    E[nβ (L - L(w*))] = Σ_i nβ h_i / (2 a_i (1 - ε a_i / 4)),
which tends to the finite-temperature value 1/2 Σ nβ h_i / (nβ h_i + γ) as ε -> 0: the quadratic
bias factor of llc-theory.md is exactly 1 / (1 - ε a / 4).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from estimator import LLCConfig, estimate_llc
from estimator.samplers import rmsprop_sgld, sgld, sgnht
from estimator.samplers.base import localized_drift, select_chains


class Quadratic(nn.Module):
    """Outputs its parameter vector for every sample; with the loss below, L(w) = 1/2 Σ h_i w_i²."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.w.expand(x.shape[0], -1)


def quadratic_loss(h: torch.Tensor):
    def loss(outputs, targets):
        return 0.5 * (outputs.pow(2) * h).sum(-1).mean()

    return loss


H = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.25, 1.5, 3.0, 0.75])
NBETA = 10.0


def exact_expectation(h: torch.Tensor, nbeta: float, gamma: float, epsilon: float) -> float:
    a = nbeta * h + gamma
    return float((nbeta * h / (2 * a * (1 - epsilon * a / 4))).sum())


def run_quadratic(epsilon: float, gamma: float, sampler: str = "sgld", draws: int = 6000, seed: int = 0):
    x = torch.zeros(16, 1)
    config = LLCConfig(
        seed=seed,
        sampler=sampler,
        epsilon=epsilon,
        gamma=gamma,
        nbeta=NBETA,
        num_chains=8,
        num_draws=draws,
        num_burnin_steps=500,
        batch_size=16,
        dtype="float64",
    )
    return estimate_llc(Quadratic(len(H)), (x, torch.zeros(16, 1)), loss=quadratic_loss(H), config=config)


def test_small_step_gives_the_exact_finite_temperature_value():
    gamma = 10.0  # comparable to nβ h, so the γ-dependence of the value is really tested
    epsilon = 2e-3  # ε a/4 ≤ 0.025
    result = run_quadratic(epsilon=epsilon, gamma=gamma, draws=12000)
    finite_temperature = 0.5 * float((NBETA * H / (NBETA * H + gamma)).sum())
    assert finite_temperature == pytest.approx(exact_expectation(H, NBETA, gamma, 0.0))
    sem = result.llc_sem
    assert sem < 0.02 * finite_temperature  # the run is long enough for the comparison to mean something
    # The exact discrete-time value, within 4 standard errors.
    assert abs(result.llc_mean - exact_expectation(H, NBETA, gamma, epsilon)) < 4 * sem
    # And the ε -> 0 value within the (≤ 2.5 %) discretisation bias plus 4 standard errors.
    assert abs(result.llc_mean - finite_temperature) < 0.025 * finite_temperature + 4 * sem
    assert result.diagnostics["split_rhat"] < 1.05


def test_bias_factor_matches_one_over_one_minus_eps_a_over_4():
    gamma = 1.0
    epsilon = 0.05  # ε a/4 ranges from 0.075 to 0.51: large, known inflation
    result = run_quadratic(epsilon=epsilon, gamma=gamma)
    exact = exact_expectation(H, NBETA, gamma, epsilon)
    unbiased = exact_expectation(H, NBETA, gamma, 0.0)
    assert exact / unbiased > 1.2  # the bias is real and large here
    assert abs(result.llc_mean - exact) < 4 * result.llc_sem
    assert result.llc_sem < 0.02 * exact
    # MALA acceptance sees the large step.
    assert result.diagnostics["mala_acceptance"] < 0.97


def test_rmsprop_sgld_samples_the_same_quadratic_posterior():
    gamma = 10.0
    result = run_quadratic(epsilon=1e-3, gamma=gamma, sampler="rmsprop_sgld")
    target = exact_expectation(H, NBETA, gamma, 0.0)
    assert abs(result.llc_mean - target) < 0.03 * target + 4 * result.llc_sem


def test_sgnht_samples_the_same_quadratic_posterior():
    gamma = 10.0
    result = run_quadratic(epsilon=1e-3, gamma=gamma, sampler="sgnht", draws=8000)
    target = exact_expectation(H, NBETA, gamma, 0.0)
    assert abs(result.llc_mean - target) < 0.05 * target + 4 * result.llc_sem


def test_automatic_epsilon_meets_the_bias_target():
    gamma = 10.0
    x = torch.zeros(16, 1)
    config = LLCConfig(seed=0, gamma=gamma, nbeta=NBETA, num_chains=4, num_draws=3000, dtype="float64")
    result = estimate_llc(Quadratic(len(H)), (x, torch.zeros(16, 1)), loss=quadratic_loss(H), config=config)
    diag = result.diagnostics
    assert diag["top_hessian_eigenvalue_at_w_star"] == pytest.approx(float(H.max()), rel=1e-3)
    # The Hutchinson trace at the chains is the trace of the (constant) Hessian.
    assert diag["hessian_trace_typical"] == pytest.approx(float(H.sum()), rel=0.25)
    # ε was sized so that the predicted quadratic bias (ε/8) nβ tr(H) / λ̂ is the target ...
    target = config.target_bias / (1 + config.target_bias)
    assert diag["predicted_relative_bias"] == pytest.approx(target, rel=1e-6)
    # ... and the exact discrete-time bias at that ε is indeed about that (here within a factor 2).
    exact_eps = exact_expectation(H, NBETA, gamma, result.epsilon)
    exact_zero = exact_expectation(H, NBETA, gamma, 0.0)
    assert 0.3 * target < exact_eps / exact_zero - 1 < 2 * target
    assert abs(result.llc_mean - exact_zero) < 2 * target * exact_zero + 4 * result.llc_sem


def test_sgld_kernel_is_the_paper_update():
    w_star = {"w": torch.tensor([[1.0, -2.0]])}
    w = torch.tensor([[1.5, 0.0]])
    grads = {"w": torch.tensor([[0.2, -0.4]])}
    noise = {"w": torch.tensor([[0.3, 0.1]])}
    eps, gamma, nbeta = 0.01, 5.0, 100.0
    kernel = sgld.build(gamma, nbeta, w_star)
    state = kernel.init({"w": w.clone()}, noise, eps)
    state = kernel.update(state, grads, noise, eps)
    expected = w - eps / 2 * (nbeta * grads["w"] + gamma * (w - w_star["w"])) + math.sqrt(eps) * noise["w"]
    torch.testing.assert_close(state.params["w"], expected)


def test_rmsprop_kernel_freezes_its_preconditioner():
    w_star = {"w": torch.zeros(1, 3)}
    kernel = rmsprop_sgld.build(1.0, 10.0, w_star)
    zeros = {"w": torch.zeros(1, 3)}
    state = kernel.init({"w": torch.zeros(1, 3)}, zeros, 1e-3)
    for g in (1.0, 2.0):
        kernel.update(state, {"w": torch.full((1, 3), g)}, zeros, 1e-3)
    kernel.freeze(state)
    frozen = state.precond["w"].clone()
    kernel.update(state, {"w": torch.full((1, 3), 100.0)}, zeros, 1e-3)
    torch.testing.assert_close(state.precond["w"], frozen)


def test_sgnht_thermostat_is_per_chain():
    w_star = {"w": torch.zeros(2, 4)}
    kernel = sgnht.build(1.0, 1.0, w_star)
    state = kernel.init({"w": torch.zeros(2, 4)}, {"w": torch.ones(2, 4)}, 1e-2)
    kernel.update(
        state, {"w": torch.stack([torch.zeros(4), torch.full((4,), 10.0)])}, {"w": torch.zeros(2, 4)}, 1e-2
    )
    assert state.thermostat.shape == (2,)
    assert state.thermostat[0] != state.thermostat[1]
    assert np.isfinite(state.thermostat.numpy()).all()


def test_leimkuhler_matthews_noise_has_exact_gaussian_variance():
    """The LM variant of the SGLD kernel: stationary variance 1/a at a large step (plain SGLD: 1/(a(1-εa/4)))."""
    a, epsilon, chains, steps = 4.0, 0.4, 2000, 400  # ε a / 4 = 0.4: plain SGLD would inflate by 1.67
    gen = torch.Generator().manual_seed(0)
    results = {}
    for noise in ("iid", "lm"):
        w_star = {"w": torch.zeros(chains, 1, dtype=torch.float64)}
        kernel = sgld.build(gamma=a, nbeta=1.0, w_star=w_star, noise=noise)
        first = {"w": torch.randn(chains, 1, generator=gen, dtype=torch.float64)}
        state = kernel.init({"w": torch.zeros(chains, 1, dtype=torch.float64)}, first, epsilon)
        for _ in range(steps):
            zero_grad = {"w": torch.zeros(chains, 1, dtype=torch.float64)}
            kernel.update(state, zero_grad, {"w": torch.randn(chains, 1, generator=gen, dtype=torch.float64)}, epsilon)
        results[noise] = float(state.params["w"].var())
    assert results["iid"] == pytest.approx(1 / (a * (1 - epsilon * a / 4)), rel=0.1)
    assert results["lm"] == pytest.approx(1 / a, rel=0.1)


def test_every_kernel_steps_along_the_localized_drift():
    """Without noise each kernel's first step moves along -∇U = -(nβ ∇L + γ (w - w*)), scaled its own way;
    ε is given per step, so one kernel serves every step size."""
    dtype = torch.float64
    w_star = {"w": torch.tensor([[1.0, -2.0], [0.5, 0.5]], dtype=dtype)}
    w = torch.tensor([[1.5, 0.0], [-1.0, 2.0]], dtype=dtype)
    g = torch.tensor([[0.2, -0.4], [1.0, 3.0]], dtype=dtype)
    zero = {"w": torch.zeros_like(w)}
    nbeta, gamma = 100.0, 5.0
    drift = localized_drift(g, w, w_star["w"], nbeta, gamma)
    torch.testing.assert_close(drift, nbeta * g + gamma * (w - w_star["w"]))
    for eps in (1e-3, 1e-2):
        kernel = sgld.build(gamma, nbeta, w_star)
        state = kernel.update(kernel.init({"w": w.clone()}, zero, eps), {"w": g}, zero, eps)
        torch.testing.assert_close(state.params["w"], w - eps / 2 * drift)
        kernel = rmsprop_sgld.build(gamma, nbeta, w_star, delta=0.1)
        state = kernel.update(kernel.init({"w": w.clone()}, zero, eps), {"w": g}, zero, eps)
        m = 1 / (g.abs() + 0.1)  # first step: the bias-corrected square average is g²
        torch.testing.assert_close(kernel.drift_scale(state)["w"], m)
        torch.testing.assert_close(state.params["w"], w - eps / 2 * m * drift)
        kernel = sgnht.build(gamma, nbeta, w_star)
        state = kernel.update(kernel.init({"w": w.clone()}, zero, eps), {"w": g}, zero, eps)
        torch.testing.assert_close(state.params["w"], w - eps * drift)


def test_select_chains_keeps_the_chosen_rows_of_every_state_tensor():
    w_star = {"w": torch.zeros(3, 2)}
    kernel = rmsprop_sgld.build(1.0, 10.0, w_star)
    state = kernel.init({"w": torch.arange(6.0).view(3, 2)}, {"w": torch.zeros(3, 2)}, 1e-2)
    kernel.update(state, {"w": torch.arange(6.0).view(3, 2)}, {"w": torch.zeros(3, 2)}, 1e-2)
    kept_w = state.params["w"][[0, 2]].clone()
    picked = select_chains(state, torch.tensor([0, 2]), 3, {"w": kept_w})
    assert picked.params["w"] is kept_w and picked.step == 1
    torch.testing.assert_close(picked.precond["w"], state.precond["w"][[0, 2]])
    torch.testing.assert_close(picked.square_avg["w"], state.square_avg["w"][[0, 2]])
