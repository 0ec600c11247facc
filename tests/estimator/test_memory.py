"""estimator/memory.py: the memory estimate of a run (pure Python)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from estimator.memory import (
    BYTES_PER_DTYPE,
    activation_bytes_estimate,
    estimate_memory_bytes,
    eval_activation_bytes_estimate,
    sampling_bytes,
)


def test_parameter_term_and_activations_add():
    assert estimate_memory_bytes(1000, 8, 4, 0) == 1000 * 12 * 4 == sampling_bytes(1000, 8, 4)
    assert estimate_memory_bytes(1000, 8, 8, 500) == 1000 * 12 * 8 + 500 == sampling_bytes(1000, 8, 8, 500)
    assert BYTES_PER_DTYPE == {"float64": 8, "float32": 4, "bfloat16": 4}


def test_the_largest_phase_counts():
    """Sampling, the chain-mode probe (two chains' activations at once) and L_n(w*) (C x batch)."""
    # Few chains and large activations: the probe.
    assert estimate_memory_bytes(1000, 1, 8, 500) == 1000 * 5 * 8 + 2 * 500 > sampling_bytes(1000, 1, 8, 500)
    assert estimate_memory_bytes(1000, 4, 4, 20_000) == 1000 * 5 * 4 + 2 * 20_000
    # A large evaluation batch: L_n(w*).
    assert estimate_memory_bytes(1000, 4, 4, 100, eval_activation_bytes=90_000) == 1000 * 4 + 90_000
    # Many chains: sampling.
    assert estimate_memory_bytes(1000, 64, 4, 10_000, 20_000) == sampling_bytes(1000, 64, 4, 10_000)


def test_evaluation_activations_grow_with_chains_and_logits_dominate():
    one = eval_activation_bytes_estimate(8, 1, 64, 256, 8192, 4)
    assert one == 8 * 64 * (12 * 256 + 2 * 4 * 64 + 3 * 8192) * 4
    assert eval_activation_bytes_estimate(8, 4, 64, 256, 8192, 4) == 4 * one
    # Forward only: at one chain, less than a step's forward and backward of an 8-layer model.
    assert one < activation_bytes_estimate(8, 64, 256, 8, 8192, 4)
    with pytest.raises(ValueError, match="num_chains must be an integer >= 1"):
        eval_activation_bytes_estimate(8, 0, 64, 256, 8192, 4)


def test_activation_estimate_grows_with_every_size():
    base = activation_bytes_estimate(8, 128, 256, 4, 1000, 4)
    assert base == (4 * 8 * 128 * (16 * 256 + 2 * 4 * 128) + 8 * 128 * 2 * 1000) * 4
    for changed in (dict(batch_size=16), dict(seq_len=256), dict(hidden=512), dict(layers=8), dict(vocab=5000)):
        args = dict(batch_size=8, seq_len=128, hidden=256, layers=4, vocab=1000, bytes=4) | changed
        assert activation_bytes_estimate(**args) > base


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="num_params must be an integer >= 1"):
        estimate_memory_bytes(bad, 2, 4)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 1"):
        activation_bytes_estimate(1, bad, 1, 1, 1, 4)
    if bad != 0:  # 0 activation bytes is allowed (True is refused: a bool is no count)
        with pytest.raises(ValueError, match="eval_activation_bytes must be an integer >= 0"):
            estimate_memory_bytes(1, 1, 4, 0, bad)


def test_no_torch_import():
    code = "import sys, estimator.memory; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
