"""The public API: inputs, losses, determinism across chain modes, progress/stop, divergence, export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from estimator import LLCConfig, LLCResult, ProgressEvent, estimate_llc
from tests.estimator.models import trained_classifier

# Short fixed-epsilon runs: these tests check plumbing, not accuracy.
QUICK = LLCConfig(
    seed=3, epsilon=1e-4, gamma=100.0, num_chains=3, num_draws=40, num_burnin_steps=20, batch_size=64
)


@pytest.fixture(scope="module")
def classifier():
    return trained_classifier()


def test_result_fields_and_json(classifier):
    model, x, y = classifier
    result = estimate_llc(model, (x, y), loss="cross_entropy", config=QUICK)
    assert isinstance(result, LLCResult)
    assert result.loss_trace.shape == (3, 40) and result.llc_trace.shape == (3, 40)
    assert result.llc_per_chain.shape == (3,)
    assert result.n == 256 and result.nbeta == pytest.approx(256 / math.log(256))
    assert math.isfinite(result.llc_mean) and math.isfinite(result.llc_std)
    assert result.llc_mean == pytest.approx(float(np.mean(result.llc_per_chain)))
    # The running estimate ends at the per-chain estimate.
    np.testing.assert_allclose(result.llc_trace[:, -1], result.llc_per_chain, rtol=1e-9)
    with torch.no_grad():
        assert result.init_loss == pytest.approx(nn.functional.cross_entropy(model(x), y).item(), rel=1e-5)
    assert result.config.epsilon == 1e-4 and result.config.num_draws == 40
    assert result.chain_mode == "vmap" and result.chain_mode_reason
    assert result.stopped is False
    for key in ("split_rhat", "bulk_ess", "mala_acceptance", "per_chain", "diverged_chains", "warnings"):
        assert key in result.diagnostics
    assert result.timings["steps_per_s"] > 0
    for warning in result.warnings:
        assert set(warning) == {"code", "message", "chain"}
    encoded = json.dumps(result.to_dict(), allow_nan=False)
    decoded = json.loads(encoded)
    assert len(decoded["loss_trace"]) == 3 and len(decoded["loss_trace"][0]) == 40
    assert decoded["config"]["epsilon"] == 1e-4


def test_weights_untouched_and_mode_restored(classifier):
    model, x, y = classifier
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate_llc(model, (x, y), config=QUICK)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    model.eval()
    estimate_llc(model, (x, y), config=QUICK)
    assert not model.training


class _Elementwise(nn.Module):
    """A per-feature scale and shift: no matmul, so its batched kernels are chain-exact on any BLAS."""

    def __init__(self, d: int = 6):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, d))
        self.shift = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return torch.tanh(x * self.scale + self.shift)


def test_same_seed_bit_identical_and_chains_independent(classifier):
    model, x, y = classifier
    base = estimate_llc(model, (x, y), config=QUICK)
    again = estimate_llc(model, (x, y), config=QUICK)
    assert np.array_equal(base.loss_trace, again.loss_trace) and base.llc_mean == again.llc_mean
    # "auto" decides without timing: it is exactly the mode it reports.
    explicit = estimate_llc(model, (x, y), config=QUICK.replace(chain_mode=base.chain_mode))
    assert np.array_equal(base.loss_trace, explicit.loss_trace)
    different = estimate_llc(model, (x, y), config=QUICK.replace(seed=4))
    assert not np.array_equal(base.loss_trace, different.loss_trace)
    # Chains are independent: no two chains share a trace.
    assert not np.array_equal(base.loss_trace[0], base.loss_trace[1])


def test_chain_exact_model_is_bit_identical_across_modes_and_chunking():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=gen)
    y = torch.tanh(0.9 * x + 0.1)
    model = _Elementwise()
    config = QUICK.replace(num_burnin_steps=40)
    base = estimate_llc(model, (x, y), loss="mse", config=config)
    assert base.chain_mode == "vmap" and "bit-identical to chain_mode='sequential'" in base.chain_mode_reason
    sequential = estimate_llc(model, (x, y), loss="mse", config=config.replace(chain_mode="sequential"))
    chunked = estimate_llc(model, (x, y), loss="mse", config=config.replace(max_chains_per_chunk=2))
    assert sequential.chain_mode == "sequential"
    assert "chunks of 2" in chunked.chain_mode_reason
    for other in (sequential, chunked):
        assert np.array_equal(base.loss_trace, other.loss_trace)
        assert base.llc_mean == other.llc_mean
    # Automatic settings too (curvature, ε adaptation and warm-up see every chain alike).
    auto = LLCConfig(seed=1, num_chains=3, num_draws=30, num_burnin_steps=200, batch_size=64)
    a = estimate_llc(model, (x, y), loss="mse", config=auto)
    b = estimate_llc(model, (x, y), loss="mse", config=auto.replace(chain_mode="sequential"))
    assert a.epsilon == b.epsilon
    assert np.array_equal(a.loss_trace, b.loss_trace)


@pytest.mark.parametrize(
    ("chain_exact", "params_times_batch", "expected"),
    [(True, 1 << 30, "vmap"), (False, 1 << 10, "vmap"), (False, 1 << 30, "sequential")],
)
def test_auto_chain_mode_rule(classifier, monkeypatch, chain_exact, params_times_batch, expected):
    """auto: vmap when chain-exact; otherwise sequential on CPU once params x batch is large."""
    import estimator.problem as problem_module
    import estimator.tuning as tuning

    real_probe = problem_module.probe_vmap

    def probe(*args, **kwargs):
        found = real_probe(*args, **kwargs)
        found.chain_exact = chain_exact
        return found

    monkeypatch.setattr(problem_module, "probe_vmap", probe)
    model, x, y = classifier
    work = sum(p.numel() for p in model.parameters()) * QUICK.batch_size
    monkeypatch.setattr(tuning, "SEQUENTIAL_MIN_WORK", max(1, work * (1 << 20) // params_times_batch))
    result = estimate_llc(model, (x, y), config=QUICK)
    assert result.chain_mode == expected
    assert ("differ in the last bits" in result.chain_mode_reason) is (not chain_exact)
    assert "traced aten graph" in result.chain_mode_reason


def test_auto_device_keeps_tiny_models_on_the_cpu(classifier, monkeypatch):
    """device="auto": CUDA only when a step is big enough to beat launch latency, and the reason is given."""
    import estimator.tuning as tuning

    model, x, y = classifier
    if not torch.cuda.is_available():
        result = estimate_llc(model, (x, y), config=QUICK.replace(num_draws=5, num_burnin_steps=0))
        assert result.config.device == "cpu" and result.extras["device_reason"] == "auto: no CUDA device is available"
        # Pretend there is one: a step of this classifier is far below the threshold.
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    params = sum(p.numel() for p in model.parameters())
    assert tuning.step_work(QUICK.num_chains, params, QUICK.batch_size) < tuning.CUDA_MIN_WORK
    result = estimate_llc(model, (x, y), config=QUICK.replace(num_draws=5, num_burnin_steps=0))
    assert result.config.device == "cpu"
    assert "too small for a GPU to pay off" in result.extras["device_reason"]
    assert f"= {tuning.step_work(QUICK.num_chains, params, QUICK.batch_size):,} <" in result.extras["device_reason"]


def test_untraceable_kernel_runs_eager_with_the_same_result(classifier, monkeypatch):
    """When tracing fails (e.g. an op without a fake-tensor rule), the eager kernel runs, and says so."""
    import estimator.functional as functional

    def refuse(fn, tracing_mode):
        raise NotImplementedError("no fake-tensor rule for some op")

    model, x, y = classifier
    traced = estimate_llc(model, (x, y), config=QUICK)
    monkeypatch.setattr(functional, "make_fx", refuse)
    monkeypatch.setattr(functional, "_graph_cache", type(functional._graph_cache)())  # nothing to reuse
    eager = estimate_llc(model, (x, y), config=QUICK)
    assert "eager gradient kernel: tracing failed (NotImplementedError" in eager.chain_mode_reason
    assert "traced aten graph" in traced.chain_mode_reason
    assert np.array_equal(traced.loss_trace, eager.loss_trace)


class _Scaled(nn.Module):
    """Same parameters for every instance; the forward depends on a plain float attribute."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.linear = nn.Linear(6, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.linspace(-1, 1, 18).view(3, 6))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x) * self.scale


def test_traced_graph_is_shared_only_between_models_that_compute_the_same(classifier, monkeypatch):
    """The process-wide cache: another instance of the same structure reuses the graph; an instance
    whose forward differs (here a float attribute baked into the graph) fails the bitwise check and
    is traced afresh, with the same results as eager kernels."""
    import estimator.functional as functional
    import estimator.tuning as tuning

    monkeypatch.setattr(functional, "_graph_cache", type(functional._graph_cache)())
    _, x, y = classifier
    first = estimate_llc(_Scaled(1.0), (x, y), config=QUICK)
    same = estimate_llc(_Scaled(1.0), (x, y), config=QUICK)
    other = estimate_llc(_Scaled(2.0), (x, y), config=QUICK)
    assert "same structure" not in first.chain_mode_reason
    assert "traced by an earlier call on a model of the same structure" in same.chain_mode_reason
    assert "same structure" not in other.chain_mode_reason and "traced aten graph" in other.chain_mode_reason
    assert np.array_equal(first.loss_trace, same.loss_trace)
    monkeypatch.setattr(tuning, "TRACE_KERNELS", False)
    other_eager = estimate_llc(_Scaled(2.0), (x, y), config=QUICK)
    assert np.array_equal(other.loss_trace, other_eager.loss_trace)
    assert not np.array_equal(other.loss_trace, first.loss_trace)


class _Power(nn.Module):
    """f(x; w) = x · w^k with the exponent in a closure: every instance has the same class and
    parameters, and at w* = 0 every k gives zero loss and zero gradient."""

    def __init__(self, k: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.power = (lambda w: w**k)  # noqa: E731 - the closure is the point

    def forward(self, x):
        return x * self.power(self.w)


@pytest.mark.parametrize("fingerprint", [True, False], ids=["with-attribute-fingerprint", "bitwise-checks-alone"])
def test_a_cached_graph_is_not_reused_for_a_model_that_differs_only_away_from_w_star(monkeypatch, fingerprint):
    """A graph traced for x·w^8 must not serve x·w^4: both are 0 with zero gradient at w* = 0, so a
    check at w* alone cannot tell them apart (this once gave a -64 % estimate for w^4). Either
    safeguard alone must catch it: the cache key (the closure's exponent) and the second bitwise
    check at a point moved off w*."""
    import estimator.functional as functional

    monkeypatch.setattr(functional, "_graph_cache", type(functional._graph_cache)())
    if not fingerprint:
        monkeypatch.setattr(functional, "_attribute_fingerprint", lambda module: ())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 1, generator=gen)
    data = (x, torch.zeros(2000, 1))
    config = LLCConfig(seed=0, epsilon=1e-3, gamma=1.0, num_chains=2, num_draws=200, num_burnin_steps=100, batch_size=256)
    estimate_llc(_Power(4), data, loss="mse", config=config)  # caches the graph of x·w^4
    after_other = estimate_llc(_Power(2), data, loss="mse", config=config)
    monkeypatch.setattr(functional, "_graph_cache", type(functional._graph_cache)())
    alone = estimate_llc(_Power(2), data, loss="mse", config=config)
    assert "same structure" not in after_other.chain_mode_reason
    np.testing.assert_array_equal(after_other.loss_trace, alone.loss_trace)


def test_traced_kernels_are_bit_identical_to_eager(classifier, monkeypatch):
    import estimator.tuning as tuning

    model, x, y = classifier
    config = LLCConfig(seed=1, num_chains=2, num_draws=30, num_burnin_steps=200)  # automatic ε and warm-up
    traced = estimate_llc(model, (x, y), config=config)
    monkeypatch.setattr(tuning, "TRACE_KERNELS", False)
    eager = estimate_llc(model, (x, y), config=config)
    assert "traced aten graph" in traced.chain_mode_reason
    assert traced.epsilon == eager.epsilon
    assert np.array_equal(traced.loss_trace, eager.loss_trace)


def test_dataset_input_matches_tensors(classifier):
    model, x, y = classifier
    from_tensors = estimate_llc(model, (x, y), config=QUICK)
    from_dataset = estimate_llc(model, TensorDataset(x, y), config=QUICK)
    assert np.array_equal(from_tensors.loss_trace, from_dataset.loss_trace)


def test_loss_names_and_callable():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=gen)
    y_cls = torch.randint(0, 3, (128,), generator=gen)
    y_bin = torch.randint(0, 2, (128,), generator=gen).float()
    y_reg = torch.randn(128, 2, generator=gen)
    torch.manual_seed(0)
    logits = nn.Linear(4, 3)
    log_probs = nn.Sequential(logits, nn.LogSoftmax(dim=-1))
    ce = estimate_llc(logits, (x, y_cls), loss="cross_entropy", config=QUICK)
    nll = estimate_llc(log_probs, (x, y_cls), loss="nll", config=QUICK)
    assert nll.init_loss == pytest.approx(ce.init_loss, rel=1e-6)
    assert nll.llc_mean == pytest.approx(ce.llc_mean, rel=1e-3)
    bce = estimate_llc(nn.Linear(4, 1), (x, y_bin), loss="bce_with_logits", config=QUICK)
    mse = estimate_llc(nn.Linear(4, 2), (x, y_reg), loss="mse", config=QUICK)
    custom = estimate_llc(
        nn.Linear(4, 2), (x, y_reg), loss=lambda out, t: ((out - t) ** 2).mean(), config=QUICK.replace(seed=5)
    )
    for result in (bce, mse, custom):
        assert math.isfinite(result.llc_mean)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        estimate_llc(logits, (x, y_cls), loss="hinge", config=QUICK)


def test_bad_inputs_are_named():
    model = nn.Linear(3, 1)
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="inputs have 10 samples but targets have 9"):
        estimate_llc(model, (x, torch.randn(9, 1)), loss="mse")
    with pytest.raises(ValueError, match="data must be"):
        estimate_llc(model, [x], loss="mse")
    with pytest.raises(ValueError, match="config must be an LLCConfig"):
        estimate_llc(model, (x, torch.randn(10, 1)), loss="mse", config={"epsilon": 1e-3})
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        estimate_llc(lambda v: v, (x, torch.randn(10, 1)), loss="mse")
    frozen = nn.Linear(3, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        estimate_llc(frozen, (x, torch.randn(10, 1)), loss="mse")


def test_progress_events_bounded_and_stop(classifier):
    model, x, y = classifier
    events: list[ProgressEvent] = []
    config = QUICK.replace(num_draws=3000, num_burnin_steps=50)

    def stop_after_some_draws(event: ProgressEvent):
        events.append(event)
        return not (event.phase == "sampling" and min(event.draws_done) >= 100)

    import estimator.phases as phases

    old = phases.PROGRESS_INTERVAL_S
    phases.PROGRESS_INTERVAL_S = 0.0  # report at every check so the test is fast and deterministic
    try:
        result = estimate_llc(model, (x, y), config=config, progress=stop_after_some_draws)
    finally:
        phases.PROGRESS_INTERVAL_S = old
    assert result.stopped
    assert any(w["code"] == "stopped" for w in result.warnings)
    done = events[-1].draws_done
    assert 100 <= min(done) < 3000
    assert result.loss_trace.shape == (3, max(done))
    assert np.all(np.isfinite(result.loss_trace))
    assert math.isfinite(result.llc_mean)
    assert events[0].phase == "burnin" and events[-1].num_draws == 3000 and events[-1].num_chains == 3
    steps = [e.steps_done for e in events]
    assert steps == sorted(steps)
    assert all(0 <= e.fraction <= 1 for e in events)


def test_progress_rate_is_bounded(classifier):
    model, x, y = classifier
    events: list[ProgressEvent] = []
    result = estimate_llc(model, (x, y), config=QUICK.replace(num_draws=400), progress=events.append)
    elapsed = result.timings["total_s"]
    # At most one report per 0.5 s plus one at the end of each phase.
    assert 1 <= len(events) <= elapsed / 0.5 + 3
    assert events[-1].draws_done == [400, 400, 400]


def test_stop_during_burnin_returns_empty_result(classifier):
    model, x, y = classifier
    result = estimate_llc(model, (x, y), config=QUICK, progress=lambda event: False)
    assert result.stopped
    assert result.loss_trace.shape[1] == 0
    assert math.isnan(result.llc_mean)
    json.dumps(result.to_dict(), allow_nan=False)


def test_huge_epsilon_diverges_with_a_helpful_message(classifier):
    model, x, y = classifier
    result = estimate_llc(model, (x, y), config=QUICK.replace(epsilon=10.0))
    assert result.diagnostics["diverged_chains"] == [0, 1, 2]
    assert math.isnan(result.llc_mean)
    messages = [w for w in result.warnings if w["code"] == "diverged"]
    assert len(messages) == 3 and {w["chain"] for w in messages} == {0, 1, 2}
    assert "too large for the curvature" in messages[0]["message"] and "try epsilon" in messages[0]["message"]
    suggested = result.diagnostics["divergences"][0]["suggested_epsilon"]
    assert 0 < suggested <= 1.0  # a tenth of the step that diverged
    json.dumps(result.to_dict(), allow_nan=False)


class _Cliff(nn.Module):
    """A quadratic bowl with a wall of exploding loss at |w| > 2: chains that wander out diverge."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        w = self.w.expand(x.shape[0], 1)
        return 0.5 * w**2 + torch.exp(40 * (w.abs() - 2.0))


# Steps large enough that some of 8 chains wander over the cliff and diverge, not all.
CLIFF_CONFIG = LLCConfig(
    seed=0, epsilon=0.05, gamma=0.01, nbeta=1.0, num_chains=8, num_draws=300, num_burnin_steps=0, batch_size=100
)


def test_healthy_chains_still_report_when_some_diverge():
    x = torch.zeros(100, 1)
    config = CLIFF_CONFIG
    result = estimate_llc(_Cliff(), (x, torch.zeros(100, 1)), loss=lambda out, t: out.mean(), config=config)
    diverged = result.diagnostics["diverged_chains"]
    assert 0 < len(diverged) < 8
    healthy = [c for c in range(8) if c not in diverged]
    assert np.all(np.isnan(result.llc_per_chain[diverged]))
    assert np.all(np.isfinite(result.llc_per_chain[healthy]))
    assert result.llc_mean == pytest.approx(float(np.mean(result.llc_per_chain[healthy])))
    for info in result.diagnostics["divergences"]:
        kept = info["draws_done"]
        assert np.all(np.isfinite(result.loss_trace[info["chain"], :kept]))
        assert np.all(np.isnan(result.loss_trace[info["chain"], kept:]))


class _NeedsItem(nn.Module):
    """Data-dependent Python control flow: torch.func.vmap cannot trace it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x):
        out = self.lin(x)
        if out.sum().item() > 1e9:
            out = out * 0
        return out


def test_unvmappable_model_falls_back_to_sequential():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    model = _NeedsItem()
    result = estimate_llc(model, (x, y), loss="mse", config=QUICK.replace(batch_size=16))
    assert result.chain_mode == "sequential"
    assert "cannot be vmapped" in result.chain_mode_reason
    assert any(w["code"] == "vmap_unavailable" for w in result.warnings)
    assert math.isfinite(result.llc_mean)


def test_export_module_input(classifier):
    model, x, y = classifier
    model.eval()
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (x[:8],), dynamic_shapes=({0: batch},)).module()
    direct = estimate_llc(model, (x, y), config=QUICK)
    via_export = estimate_llc(exported, (x, y), config=QUICK)
    assert via_export.init_loss == pytest.approx(direct.init_loss, rel=1e-6)
    np.testing.assert_allclose(via_export.loss_trace, direct.loss_trace, rtol=1e-4)


def test_export_module_with_static_batch(classifier):
    model, x, y = classifier
    model.eval()
    exported = torch.export.export(model, (x[:32],)).module()
    result = estimate_llc(exported, (x, y), config=QUICK)
    assert result.config.batch_size == 32
    assert any(w["code"] == "static_batch" for w in result.warnings)
    assert math.isfinite(result.llc_mean)


def test_noise_prefetch_is_bit_identical(classifier, monkeypatch):
    import estimator.tuning as tuning

    model, x, y = classifier
    base = estimate_llc(model, (x, y), config=QUICK)
    monkeypatch.setattr(tuning, "PREFETCH_MIN_ELEMENTS", 0)  # background noise thread on
    prefetched = estimate_llc(model, (x, y), config=QUICK)
    assert np.array_equal(base.loss_trace, prefetched.loss_trace)
    assert base.llc_mean == prefetched.llc_mean
    # Divergence drops rows while a prefetch is pending: the survivors' noise stays aligned.
    auto = LLCConfig(seed=2, num_chains=3, num_draws=30, num_burnin_steps=100)
    a = estimate_llc(model, (x, y), config=auto)
    monkeypatch.setattr(tuning, "PREFETCH_MIN_ELEMENTS", 10**12)
    b = estimate_llc(model, (x, y), config=auto)
    assert np.array_equal(a.loss_trace, b.loss_trace)


def test_explicit_epsilon_skips_curvature(classifier):
    model, x, y = classifier
    result = estimate_llc(model, (x, y), config=QUICK)
    assert math.isnan(result.diagnostics["top_hessian_eigenvalue_at_w_star"])
    assert result.to_dict()["diagnostics"]["top_hessian_eigenvalue_at_w_star"] is None


def test_divergence_with_noise_prefetch_is_bit_identical(monkeypatch):
    import estimator.tuning as tuning

    x = torch.zeros(100, 1)
    config = CLIFF_CONFIG

    def run():
        return estimate_llc(_Cliff(), (x, torch.zeros(100, 1)), loss=lambda out, t: out.mean(), config=config)

    plain = run()
    monkeypatch.setattr(tuning, "PREFETCH_MIN_ELEMENTS", 0)
    prefetched = run()
    assert plain.diagnostics["diverged_chains"] and len(plain.diagnostics["diverged_chains"]) < 8
    np.testing.assert_array_equal(plain.loss_trace, prefetched.loss_trace)


def test_huge_n_uses_a_stated_init_loss_subsample(classifier, monkeypatch):
    import estimator.problem as problem_module

    model, x, y = classifier
    monkeypatch.setattr(problem_module, "MAX_INIT_LOSS_SAMPLES", 100)
    result = estimate_llc(model, (x, y), config=QUICK)
    assert result.init_loss_samples == 100 and result.n == 256
    assert any(w["code"] == "init_loss_subsample" for w in result.warnings)


def test_sequential_chains_share_one_chain_sized_noise_buffer(classifier, monkeypatch):
    """Memory: chunks draw their noise into one shared buffer of a chunk's size, not C·P of buffers."""
    import estimator.chains as chains_module

    filled = []
    real_draw = chains_module._draw_normals

    def recording_draw(out, generators):
        filled.append((tuple(out.shape), out.data_ptr()))
        real_draw(out, generators)

    monkeypatch.setattr(chains_module, "_draw_normals", recording_draw)
    model, x, y = classifier
    P = sum(p.numel() for p in model.parameters())
    result = estimate_llc(model, (x, y), config=QUICK.replace(chain_mode="sequential"))
    assert result.chain_mode == "sequential"
    # One draw per chain per step (plus one per chain at init), every one into the same (1, P) buffer.
    assert len(filled) == QUICK.num_chains * (1 + QUICK.num_burnin_steps + QUICK.num_draws)
    assert {shape for shape, _ in filled} == {(1, P)}
    assert len({ptr for _, ptr in filled}) == 1


@pytest.mark.parametrize("burnin", [1, 2])
def test_a_burnin_too_short_to_settle_still_checks_its_steps(burnin):
    """With the automatic step size, a burn-in of one or two steps is all exploration: the last
    steps are checked for divergence from the exploration block (there is no settle stage)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(64, 3)
    result = estimate_llc(model, (x, model(x).detach()), loss="mse",
                          config=LLCConfig(num_chains=2, num_draws=20, num_burnin_steps=burnin, seed=0))
    assert result.config.num_burnin_steps == burnin
    assert math.isfinite(result.llc_mean) and result.diagnostics["diverged_chains"] == []


def test_bfloat16_runs_the_model_in_autocast_with_float32_chains(classifier):
    """dtype="bfloat16": w* and the chains stay float32, the forward runs in bfloat16 (so L_n(w*)
    moves by bfloat16 rounding), and λ̂ lands near the float32 run's."""
    from estimator.functional import FlatModel
    from estimator.losses import LOSSES

    model, x, y = classifier
    flat = FlatModel(model, LOSSES["cross_entropy"], torch.device("cpu"), torch.float32, torch.bfloat16)
    assert flat.w_star.dtype == torch.float32
    assert flat.loss(flat.w_star, x, y).dtype == torch.float32
    full = estimate_llc(model, (x, y), config=QUICK)
    half = estimate_llc(model, (x, y), config=QUICK.replace(dtype="bfloat16"))
    assert half.config.dtype == "bfloat16"
    assert half.init_loss != full.init_loss
    assert half.init_loss == pytest.approx(full.init_loss, rel=1e-2)
    assert half.llc_mean == pytest.approx(full.llc_mean, rel=0.1)


def test_token_losses_and_bfloat16_are_accepted_names():
    from estimator.config import DTYPES, LOSSES

    assert {"causal_lm", "masked_lm"} <= set(LOSSES) and "bfloat16" in DTYPES
    with pytest.raises(ValueError, match="float32, float64, bfloat16"):
        LLCConfig(dtype="float16")
