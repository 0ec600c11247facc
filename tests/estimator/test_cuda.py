"""The estimator on a CUDA device: skipped where there is none (CI); on a GPU machine run

    bash bench/gpu_check.sh OUT_DIR     # these tests, the API and validation tests, bench/speed.py --device cuda

These check what only a GPU can show: data and weights moved to the device and back, the traced
vmapped kernel replayed there, chains independent of chunking, determinism, agreement with the CPU
estimate and exact theory, the divergence path with CUDA tensors, and device="auto" choosing the
GPU for real models and the CPU for tiny ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from estimator import LLCConfig, estimate_llc
from estimator import validation_cases as vc
from tests.estimator.models import trained_classifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

QUICK = LLCConfig(
    seed=3, epsilon=1e-4, gamma=100.0, num_chains=4, num_draws=60, num_burnin_steps=20, batch_size=64,
    device="cuda",
)  # fmt: skip


def test_cpu_model_and_data_run_on_cuda_and_are_left_untouched():
    model, x, y = trained_classifier(n=512, d=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = estimate_llc(model, (x, y), config=QUICK)
    assert result.chain_mode == "vmap"
    assert "traced aten graph" in result.chain_mode_reason
    assert np.isfinite(result.llc_per_chain).all() and result.loss_trace.shape == (4, 60)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert x.device.type == "cpu"
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert result.to_dict()["config"]["device"].startswith("cuda")
    assert result.extras["device_reason"] == "requested (device='cuda')"


def test_cuda_model_and_explicit_index():
    model, x, y = trained_classifier(n=512, d=8)
    model = model.cuda()
    result = estimate_llc(model, (x.cuda(), y.cuda()), config=QUICK.replace(device="cuda:0"))
    assert np.isfinite(result.llc_mean)
    assert all(p.device.type == "cuda" for p in model.parameters())
    with pytest.raises(ValueError, match="CUDA device"):
        estimate_llc(model, (x, y), config=QUICK.replace(device=f"cuda:{torch.cuda.device_count()}"))


def test_same_call_is_bit_identical_and_chunking_does_not_change_a_chain():
    model, x, y = trained_classifier(n=512, d=8)
    a = estimate_llc(model, (x, y), config=QUICK)
    b = estimate_llc(model, (x, y), config=QUICK)
    np.testing.assert_array_equal(a.loss_trace, b.loss_trace)
    # Chunks of one chain: every chain keeps its own seed, minibatch order and noise; on the GPU the
    # batched kernels may round differently from single-chain ones, so allow rounding-level drift.
    chunked = estimate_llc(model, (x, y), config=QUICK.replace(max_chains_per_chunk=1))
    np.testing.assert_allclose(chunked.loss_trace, a.loss_trace, rtol=1e-4, atol=1e-6)
    sequential = estimate_llc(model, (x, y), config=QUICK.replace(chain_mode="sequential"))
    np.testing.assert_allclose(sequential.loss_trace, a.loss_trace, rtol=1e-4, atol=1e-6)


def test_auto_mode_on_cuda_vmaps_even_large_models():
    """The CPU rule (large, not chain-exact: sequential) does not apply on a GPU, where vmap is the win."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    x, y = torch.randn(4096, 256), torch.randint(0, 10, (4096,))
    result = estimate_llc(model, (x, y), config=QUICK.replace(batch_size=512, num_draws=10, num_burnin_steps=0))
    assert result.chain_mode == "vmap", result.chain_mode_reason


def test_auto_device_takes_cuda_for_real_models_and_the_cpu_for_tiny_ones():
    model, x, y = trained_classifier(n=512, d=8)  # 195 parameters: a GPU step would be launch-bound
    tiny = estimate_llc(model, (x, y), config=QUICK.replace(device="auto"))
    assert tiny.config.device == "cpu" and "too small for a GPU" in tiny.extras["device_reason"]
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x, y = torch.randn(2048, 64), torch.randint(0, 10, (2048,))
    result = estimate_llc(big, (x, y), config=QUICK.replace(device="auto", batch_size=256, num_draws=10))
    assert result.config.device.startswith("cuda"), result.extras["device_reason"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_estimate_agrees_with_theory_and_cpu(dtype):
    """Regular linear regression, d = 8 so λ = 4: the defaults on CUDA land where they do on CPU."""
    case = vc.linear_case(8, 1, 20_000)
    model, data = case.build(0)
    on_cuda = estimate_llc(model, data, loss=case.loss, config=LLCConfig(seed=0, device="cuda", dtype=dtype))
    on_cpu = estimate_llc(model, data, loss=case.loss, config=LLCConfig(seed=0, device="cpu", dtype=dtype))
    assert abs(vc.relative_error(on_cuda.llc_mean, case.llc)) <= 0.05, on_cuda.llc_mean
    # Different random streams on the two devices: agree within the chains' spread.
    spread = 3 * max(on_cuda.llc_std, on_cpu.llc_std) / np.sqrt(len(on_cuda.llc_per_chain))
    assert abs(on_cuda.llc_mean - on_cpu.llc_mean) <= max(spread, 0.05 * float(case.llc))


def test_huge_epsilon_diverges_cleanly_on_cuda():
    model, x, y = trained_classifier(n=512, d=8)
    result = estimate_llc(model, (x, y), config=QUICK.replace(epsilon=10.0))
    assert result.diagnostics["diverged_chains"] == [0, 1, 2, 3]
    assert np.isnan(result.llc_mean)
    messages = [w for w in result.warnings if w["code"] == "diverged"]
    assert len(messages) == 4 and "try epsilon" in messages[0]["message"]


def test_progress_can_stop_a_cuda_run():
    model, x, y = trained_classifier(n=512, d=8)
    seen = []

    def progress(event):
        seen.append(event)
        return event.phase != "sampling"

    config = QUICK.replace(num_draws=200_000)
    result = estimate_llc(model, (x, y), config=config, progress=progress)
    assert result.stopped and 0 < result.loss_trace.shape[1] < 200_000
    assert np.isfinite(result.loss_trace).all() and seen[-1].phase == "sampling"
