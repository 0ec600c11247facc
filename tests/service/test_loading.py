"""worker.loading: what a job process gets from stored checkpoints and datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from estimator.architectures import build_model
from tests.helpers import MLP, write_dataset
from worker.loading import load_dataset, load_model

CNN = {"kind": "cnn", "in_channels": 1, "image_size": 6, "channels": [3], "num_classes": 4}


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
@pytest.mark.parametrize("architecture", [MLP, CNN], ids=["mlp", "cnn"])
def test_load_model_reproduces_the_saved_module(tmp_path, fmt, architecture):
    torch.manual_seed(0)
    original = build_model(architecture)
    path = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        save_file(original.state_dict(), path)
    else:
        torch.save(original.state_dict(), path)
    loaded = load_model(path, fmt, architecture)
    assert not loaded.training
    x = torch.randn(3, 4) if architecture is MLP else torch.randn(3, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), original.eval()(x))


def test_load_model_keeps_float64_checkpoints_in_float64(tmp_path):
    original = build_model(MLP).double()
    save_file(original.state_dict(), tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors", "safetensors", MLP)
    assert all(p.dtype == torch.float64 for p in loaded.parameters())


def test_load_model_is_strict(tmp_path):
    state = build_model(MLP).state_dict()
    del state["2.bias"]
    save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(RuntimeError, match="2.bias"):
        load_model(tmp_path / "m.safetensors", "safetensors", MLP)


def test_load_model_pt2(tmp_path):
    torch.manual_seed(0)
    original = build_model(MLP).eval()
    torch.export.save(torch.export.export(original, (torch.randn(2, 4),)), tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2", "pt2", None)
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.allclose(loaded(x), original(x))


@pytest.mark.parametrize(("fmt", "compressed"), [("safetensors", False), ("npz", False), ("npz", True)])
def test_load_dataset_returns_the_stored_arrays(tmp_path, fmt, compressed):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3)).astype(np.float64)
    y = rng.integers(0, 5, size=10).astype(np.int64)
    path = write_dataset(tmp_path / "d", fmt=fmt, x=x, y=y, compressed=compressed)
    tx, ty = load_dataset(path, fmt)
    assert tx.dtype == torch.float64 and ty.dtype == torch.int64
    np.testing.assert_array_equal(tx.numpy(), x)
    np.testing.assert_array_equal(ty.numpy(), y)
    tx.mul_(2)  # copy-on-write mapping: writable in memory, the stored file is untouched
    np.testing.assert_array_equal(load_dataset(path, fmt)[0].numpy(), x)


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_load_dataset_is_memory_mapped(tmp_path, fmt):
    """The tensors' memory is a mapping of the stored file (per /proc/self/maps), not a copy."""
    x = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    path = write_dataset(tmp_path / f"d.{fmt}", fmt=fmt, x=x, y=np.zeros(1000, np.float32))
    tx, ty = load_dataset(path, fmt)
    mapped = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == str(path.resolve()):
                start, end = (int(v, 16) for v in parts[0].split("-"))
                mapped.append((start, end))
    for tensor in (tx, ty):
        assert any(start <= tensor.data_ptr() < end for start, end in mapped)


def test_load_dataset_fortran_order_and_bfloat16(tmp_path):
    x = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    path = write_dataset(tmp_path / "f.npz", fmt="npz", x=x, y=np.zeros(2, np.float32))
    np.testing.assert_array_equal(load_dataset(path, "npz")[0].numpy(), x)
    xb = torch.tensor([[1.5, -2.0], [0.25, 3.0]], dtype=torch.bfloat16)
    save_file({"x": xb, "y": torch.zeros(2)}, tmp_path / "b.safetensors")
    tx, _ = load_dataset(tmp_path / "b.safetensors", "safetensors")
    assert tx.dtype == torch.bfloat16 and torch.equal(tx, xb)
