"""Content-based format detection and parsing (backend/formats.py): pure Python + numpy, no pickle."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

from backend import formats
from backend.formats import FormatError, count_non_finite, detect_format, read_npz, read_pt2, read_safetensors
from tests.helpers import MLP, write_checkpoint, write_dataset, write_safetensors


def test_detects_each_format_from_content_not_name(tmp_path):
    import torch

    from estimator.architectures import build_model

    model = build_model(MLP).eval()
    write_checkpoint(tmp_path / "a.npz")  # safetensors under a misleading name
    write_dataset(tmp_path / "b.safetensors", fmt="npz")
    torch.save(model.state_dict(), tmp_path / "c.bin")
    torch.export.save(torch.export.export(model, (torch.randn(2, 4),)), tmp_path / "d.pt")
    assert [detect_format(tmp_path / n) for n in ("a.npz", "b.safetensors", "c.bin", "d.pt")] == ["safetensors", "npz", "pt", "pt2"]
    info = read_pt2(tmp_path / "d.pt")
    assert info.num_params == sum(p.numel() for p in model.parameters())
    assert info.parameters["0.weight"] == (8, 4)


def test_tied_weights_of_an_export_count_once(tmp_path):
    """An embedding tied to the output layer is two entries of the archive over one stored tensor:
    one weight, as the estimator samples it (result num_params and checkpoint num_params agree)."""
    import torch

    class TiedLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(40, 12)
            self.head = torch.nn.Linear(12, 40, bias=False)
            self.head.weight = self.embedding.weight
            self.other = torch.nn.Linear(12, 12)

        def forward(self, tokens):
            return self.head(self.other(self.embedding(tokens))).mean(dim=1)

    torch.export.save(torch.export.export(TiedLM(), (torch.randint(0, 40, (2, 5)),)), tmp_path / "tied.pt2")
    info = read_pt2(tmp_path / "tied.pt2")
    assert set(info.parameters) == {"embedding.weight", "head.weight", "other.weight", "other.bias"}
    assert info.num_params == 40 * 12 + 12 * 12 + 12


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"hello world, not a model", "unrecognised file format"),
        (pickle.dumps({"a": 1}), "raw pickle"),
    ],
)
def test_unrecognised_content(tmp_path, content, message):
    (tmp_path / "f").write_bytes(content)
    with pytest.raises(FormatError, match=message):
        detect_format(tmp_path / "f")


def test_zip_that_is_no_known_format(tmp_path):
    with zipfile.ZipFile(tmp_path / "f.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(FormatError, match="neither an npz"):
        detect_format(tmp_path / "f.zip")


@pytest.mark.parametrize("cut", [4, 20, -3])
def test_truncated_safetensors(tmp_path, cut):
    data = write_checkpoint(tmp_path / "c").read_bytes()
    (tmp_path / "t").write_bytes(data[:cut])
    with pytest.raises(FormatError, match="truncated|unrecognised"):
        detect_format(tmp_path / "t")
        read_safetensors(tmp_path / "t")


def test_safetensors_header_lies_about_sizes(tmp_path):
    path = write_safetensors(tmp_path / "c", {"w": np.zeros((2, 2), np.float32)})
    raw = path.read_bytes()
    (tmp_path / "bad").write_bytes(raw.replace(b'"shape": [2, 2]', b'"shape": [2, 3]'))
    with pytest.raises(FormatError, match="needs 24 bytes"):
        read_safetensors(tmp_path / "bad")


def test_truncated_npz(tmp_path):
    data = write_dataset(tmp_path / "d", fmt="npz").read_bytes()
    (tmp_path / "t").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="corrupt or truncated zip"):
        detect_format(tmp_path / "t")


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([Payload()], dtype=object), y=np.zeros(1))
    (tmp_path / "evil.npz").write_bytes(buffer.getvalue())
    assert detect_format(tmp_path / "evil.npz") == "npz"
    with pytest.raises(FormatError, match="Python objects"):
        read_npz(tmp_path / "evil.npz")
    assert not marker.exists()


def test_npz_member_with_wrong_size_is_corrupt(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros((4, 2), np.float32))
    raw = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as zf:
        zf.writestr("x.npy", raw[:-8])
        zf.writestr("y.npy", raw)
    with pytest.raises(FormatError, match="needs 32 bytes, the member holds 24"):
        read_npz(tmp_path / "d.npz")


@pytest.mark.parametrize(("fmt", "compressed"), [("safetensors", False), ("npz", False), ("npz", True)])
def test_non_finite_values_are_counted_across_chunks(tmp_path, monkeypatch, fmt, compressed):
    monkeypatch.setattr(formats, "CHUNK_BYTES", 64)  # many chunks for a small array
    x = np.ones((100, 3), np.float32)
    x[0, 0], x[57, 2], x[99, 1] = np.nan, np.inf, -np.inf
    path = write_dataset(tmp_path / "d", fmt=fmt, x=x, y=np.zeros(100, np.float32), compressed=compressed)
    tensors = read_safetensors(path) if fmt == "safetensors" else read_npz(path)
    assert count_non_finite(path, tensors["x"]) == 3
    assert count_non_finite(path, tensors["y"]) == 0


def test_bfloat16_non_finite(tmp_path):
    import torch
    from safetensors.torch import save_file

    x = torch.tensor([1.0, float("nan"), float("inf"), -2.0, 3e38], dtype=torch.bfloat16)
    save_file({"x": x}, tmp_path / "b.safetensors")
    assert count_non_finite(tmp_path / "b.safetensors", read_safetensors(tmp_path / "b.safetensors")["x"]) == 2
