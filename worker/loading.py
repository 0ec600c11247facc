"""Load stored artifacts inside a job process: models (built-in architecture + weights, or a .pt2
archive) and datasets (memory-mapped where the file layout allows it).

``load_model`` with format "pt2" runs code from the archive (``torch.export.load`` unpickles some
entries without ``weights_only``): it must only ever be called inside a per-job process, never in the
API, and only for archives uploaded by keys with the ``run-code`` scope.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.formats import TOKEN_FIELDS, TensorInfo, read_npz, read_safetensors
from estimator.architectures import build_model, normalize, state_dict_spec


def load_model(path: Path, format: str, architecture: dict[str, Any] | None) -> torch.nn.Module:  # noqa: A002
    """The checkpoint as a module in eval mode (for .pt2: the exported program's module).

    safetensors/pt: the architecture is built and the state_dict loaded strictly. The module is
    float64 when every floating tensor in the checkpoint is float64, else float32 (half-precision
    weights are upcast). Kind "hf": keys tied to another parameter may be absent (save_pretrained
    writes one copy); every other missing or unexpected key is a ValueError naming them, and the ties
    are restored after loading.
    """
    path = Path(path)
    if format == "pt2":
        # Exported modules reject .train()/.eval(); they run as exported.
        return torch.export.load(str(path)).module()
    if format not in ("safetensors", "pt"):
        raise ValueError(f"unknown checkpoint format {format!r} (expected safetensors, pt or pt2)")
    if architecture is None:
        raise ValueError(f"a {format} checkpoint needs an architecture config")
    if format == "safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    config = normalize(architecture)
    model = build_model(config)
    floating = [t.dtype for t in state.values() if t.is_floating_point()]
    if floating and all(d == torch.float64 for d in floating):
        model = model.double()
    if config["kind"] == "hf":
        _load_allowing_tied(model, state, config)
    else:
        model.load_state_dict(state, strict=True)
    return model.eval()


def _load_allowing_tied(model: torch.nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    from estimator.architectures.hf import model_key_names

    # Keys as save_pretrained writes them (GPT-NeoX: embed_out) or as the module names them (lm_head).
    saved_ties = {key: spec.tied_to for key, spec in state_dict_spec(config).items() if spec.tied_to is not None}
    renamed = model_key_names(model, [*state, *saved_ties, *saved_ties.values()])
    state = {renamed[key]: tensor for key, tensor in state.items()}
    ties = {renamed[key]: renamed[source] for key, source in saved_ties.items()}
    # Either key of a tied pair may carry the shared weight; when both do they must agree, else the
    # config's tie (tie_word_embeddings) does not describe these weights.
    untied = [
        f"{key} / {source}" for key, source in ties.items()
        if key in state and source in state and not torch.equal(state[key], state[source])
    ]
    if untied:
        raise ValueError(
            "the checkpoint holds different values for weights its config ties together "
            f"({', '.join(untied)}); set tie_word_embeddings to false in config.json if they are separate"
        )
    carried = {key for key, source in ties.items() if key in state or source in state}
    carried |= {ties[key] for key in carried}
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if key not in carried]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys: {', '.join(result.unexpected_keys)}")
    if problems:
        raise ValueError(
            f"the checkpoint does not fit its {config['config']['model_type']} architecture: {'; '.join(problems)}"
        )
    model.tie_weights()


def load_dataset(path: Path, format: str, kind: str = "xy") -> Any:  # noqa: A002
    """``(x, y)``, or for a token dataset (``kind`` "tokens") the dict ``{"input_ids", "attention_mask"?,
    "labels"?}`` that ``estimate_llc`` takes; dtypes as stored, memory-mapped (copy-on-write) when the
    file allows it: always for safetensors, for npz members stored uncompressed; compressed npz
    members are read."""
    path = Path(path)
    if format == "safetensors":
        tensors = read_safetensors(path)
    elif format == "npz":
        tensors = read_npz(path)
    else:
        raise ValueError(f"unknown dataset format {format!r} (expected safetensors or npz)")
    if kind == "tokens":
        return {name: _tensor(path, tensors[name]) for name in TOKEN_FIELDS if name in tensors}
    return _tensor(path, tensors["x"]), _tensor(path, tensors["y"])


def _tensor(path: Path, info: TensorInfo) -> torch.Tensor:
    if info.file_offset is not None and info.numel > 0:
        # mode "c": private copy-on-write mapping, so torch gets a writable array without copying the file.
        array = np.memmap(
            path, dtype=info.numpy_dtype, mode="c", offset=info.file_offset, shape=info.shape,
            order="F" if info.fortran_order else "C",
        )
    elif info.file_offset is not None:
        array = np.zeros(info.shape, dtype=info.numpy_dtype)
    else:
        assert info.npz_member is not None
        with zipfile.ZipFile(path) as zf, zf.open(info.npz_member) as member:
            array = np.lib.format.read_array(member, allow_pickle=False)
    tensor = torch.from_numpy(array)
    if info.dtype == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor
