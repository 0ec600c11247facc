"""Turning in-memory objects into the files the server accepts: safetensors bytes and architecture JSON.

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

# nn activation class name -> the architecture registry's "activation" value (api/architectures.py).
ACTIVATIONS = {
    "ReLU": "relu",
    "Tanh": "tanh",
    "GELU": "gelu",
    "Sigmoid": "sigmoid",
    "SiLU": "silu",
    "Identity": "identity",
}

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


def infer_architecture(model: Any) -> dict[str, Any]:
    """The built-in architecture JSON for a model, when it is one we can recognise.

    Recognised: ``nn.Sequential`` of ``Linear`` layers separated by one kind of activation
    (``mlp``), and ``nn.Sequential`` of bias-free ``Linear`` layers with nothing between
    them (``dln``). Anything else raises ``ValueError`` asking for ``architecture=``.
    """
    import torch.nn as nn

    hint = (
        "pass architecture={...} explicitly, e.g. "
        '{"kind": "mlp", "in_features": 16, "hidden": [32], "out_features": 3, "activation": "relu"}'
    )
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        raise ValueError(
            f"cannot infer the architecture of a {type(model).__name__}: only nn.Sequential stacks of Linear "
            f"layers (mlp, dln) are recognised; {hint}"
        )
    layers = list(model)
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    others = [m for m in layers if not isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot infer an architecture: the Sequential has no Linear layer; {hint}")
    widths = [linears[0].in_features]
    for prev, nxt in zip(linears, linears[1:], strict=False):
        if prev.out_features != nxt.in_features:
            raise ValueError(f"Linear layers do not chain: {prev} feeds {nxt}")
    widths += [m.out_features for m in linears]

    if not others and all(m.bias is None for m in linears):
        return {"kind": "dln", "widths": widths}
    has_bias = {m.bias is not None for m in linears}
    if len(has_bias) > 1:
        raise ValueError(f"cannot infer an architecture: some Linear layers have biases and some do not; {hint}")
    # mlp: Linear, act, Linear, act, ..., Linear -- the exact layout whose state_dict keys the server expects.
    expected_len = 2 * len(linears) - 1
    layout_ok = len(layers) == expected_len and all(
        isinstance(m, nn.Linear) == (i % 2 == 0) for i, m in enumerate(layers)
    )
    if not layout_ok:
        raise ValueError(
            "cannot infer an architecture: an mlp must be Sequential(Linear, activation, Linear, ..., Linear) "
            f"with one activation between consecutive Linear layers and none after the last; {hint}"
        )
    activation_names = {type(m).__name__ for m in others}
    if len(activation_names) > 1:
        raise ValueError(f"cannot infer an architecture: mixed activations {sorted(activation_names)}; {hint}")
    if others:
        name = activation_names.pop()
        if name not in ACTIVATIONS:
            raise ValueError(
                f"cannot infer an architecture: activation {name} is not one of the built-in ones "
                f"({', '.join(ACTIVATIONS)}); {hint}"
            )
        if name == "GELU" and getattr(others[0], "approximate", "none") != "none":
            raise ValueError(f"cannot infer an architecture: the built-in mlp uses exact GELU, not approximate='tanh'; {hint}")
        activation = ACTIVATIONS[name]
    else:
        activation = "relu"  # a single Linear layer: no activation is ever applied
    return {
        "kind": "mlp",
        "in_features": widths[0],
        "hidden": widths[1:-1],
        "out_features": widths[-1],
        "activation": activation,
        "bias": has_bias.pop(),
    }


_LAST_INTEGER = re.compile(r"(\d+)(?!.*\d)")


def step_from_filename(filename: str) -> int:
    """The last integer in a file's name without its extension: ``run/step_00100.safetensors`` -> 100."""
    stem = PurePath(filename).stem  # drop only the last extension: "model.step100.pt" -> "model.step100"
    match = _LAST_INTEGER.search(stem)
    if match is None:
        raise ValueError(f"no step number in file name {filename!r} (expected e.g. step_100.safetensors)")
    return int(match.group(1))
