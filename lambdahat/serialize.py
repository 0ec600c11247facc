"""Turning in-memory objects into the files the server accepts: safetensors bytes and architecture JSON
(``infer_architecture`` is the architecture registry's, re-exported here).

torch is imported only when the caller hands over torch objects, so a numpy-only user of the
client never pays for it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

from estimator.architectures import infer_architecture

__all__ = [
    "dataset_to_safetensors", "infer_architecture", "is_torch_module", "is_torch_tensor",
    "state_dict_to_safetensors", "step_from_filename",
]


def _loaded_torch() -> Any:
    # Whoever holds a tensor or a module has imported torch already: no need to import it here.
    return sys.modules.get("torch")


def is_torch_tensor(value: Any) -> bool:
    torch = _loaded_torch()
    return torch is not None and isinstance(value, torch.Tensor)


def is_torch_module(value: Any) -> bool:
    """True for any ``torch.nn.Module`` (user subclasses included), decided without importing torch."""
    torch = _loaded_torch()
    return torch is not None and isinstance(value, torch.nn.Module)


def dataset_to_safetensors(arrays: Mapping[str, Any]) -> bytes:
    """``{"x": ..., "y": ...}`` (numpy arrays, torch tensors or nested lists) as safetensors bytes."""
    if not isinstance(arrays, Mapping):
        raise TypeError(f"a dataset is a path or a dict of arrays {{'x': ..., 'y': ...}}; got {type(arrays).__name__}")
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"a dataset dict needs arrays 'x' and 'y'; missing {missing} (got keys {sorted(arrays)})")
    if any(is_torch_tensor(v) for v in arrays.values()):
        import torch
        from safetensors.torch import save

        tensors = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in arrays.items()}
        return save(tensors)
    from safetensors.numpy import save as save_numpy

    converted = {}
    for key, value in arrays.items():
        array = np.ascontiguousarray(value)
        if array.dtype == object or array.dtype.kind in "USV":
            raise ValueError(f"dataset array {key!r} has dtype {array.dtype}; it must be numeric")
        converted[key] = array
    return save_numpy(converted)


def state_dict_to_safetensors(state_dict: Mapping[str, Any]) -> bytes:
    """A torch state_dict as safetensors bytes (tensors that share storage are copied apart)."""
    import torch
    from safetensors.torch import save

    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        # clone(): safetensors refuses tensors that share memory (tied weights, views).
        tensors[key] = value.detach().cpu().contiguous().clone()
    return save(tensors)


_LAST_INTEGER = re.compile(r"(\d+)(?!.*\d)")


def step_from_filename(filename: str) -> int:
    """The last integer in a file's name without its extension: ``run/step_00100.safetensors`` -> 100."""
    stem = PurePath(filename).stem  # drop only the last extension: "model.step100.pt" -> "model.step100"
    match = _LAST_INTEGER.search(stem)
    if match is None:
        raise ValueError(f"no step number in file name {filename!r} (expected e.g. step_100.safetensors)")
    return int(match.group(1))
