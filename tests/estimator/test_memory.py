"""estimator/memory.py: the memory estimate of a run (pure Python)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from estimator.memory import BYTES_PER_DTYPE, activation_bytes_estimate, estimate_memory_bytes


def test_parameter_term_and_activations_add():
    assert estimate_memory_bytes(1000, 8, 4, 0) == 1000 * 11 * 4
    assert estimate_memory_bytes(1000, 1, 8, 500) == 1000 * 4 * 8 + 500
    assert BYTES_PER_DTYPE == {"float64": 8, "float32": 4, "bfloat16": 4}


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


def test_no_torch_import():
    code = "import sys, estimator.memory; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
