"""What every architecture kind shares: config field readers, the activation table, state_dict specs.

Plain Python: the API validates configs and checks uploaded weights with these before any torch
import. A kind's torch build imports torch inside the function that needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Generous bounds: they exist to give a clear error for a typo like 10**9 before any arithmetic.
MAX_WIDTH = 1 << 20
MAX_DEPTH = 512

# Config value -> the ``torch.nn`` class it builds; also read backwards to infer a config from a module.
ACTIVATIONS = {
    "relu": "ReLU",
    "tanh": "Tanh",
    "gelu": "GELU",
    "sigmoid": "Sigmoid",
    "silu": "SiLU",
    "identity": "Identity",
}


class ArchitectureError(ValueError):
    """The architecture config is invalid; the message names the field and what is expected."""


@dataclass(frozen=True)
class TensorSpec:
    """One state_dict entry a config's module has."""

    shape: tuple[int, ...]
    parameter: bool  # False for buffers (e.g. batch-norm running statistics)
    integer: bool = False  # True for integer buffers (num_batches_tracked)
    # The key this one shares its parameter with (GPT-2's lm_head.weight -> transformer.wte.weight):
    # save_pretrained writes only the other one, so a checkpoint may leave this key out.
    tied_to: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        """The JSON form the worker's inspector prints (worker/inspect_architecture.py)."""
        return {"shape": list(self.shape), "parameter": self.parameter, "integer": self.integer, "tied_to": self.tied_to}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> TensorSpec:
        return cls(tuple(value["shape"]), bool(value["parameter"]), bool(value.get("integer", False)), value.get("tied_to"))


# ---------------------------------------------------------------------------------------------
# Reading config fields; every error names the kind and the field.


def integer(config: dict[str, Any], field: str, *, default: Any = ..., minimum: int = 1, maximum: int = MAX_WIDTH) -> int:
    value = config.get(field, default)
    if value is ...:
        raise ArchitectureError(f"{config.get('kind')}: field '{field}' is required (an integer >= {minimum})")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchitectureError(f"{config.get('kind')}: field '{field}' must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ArchitectureError(f"{config.get('kind')}: field '{field}' must be between {minimum} and {maximum}, got {value}")
    return value


def integer_list(config: dict[str, Any], field: str, *, default: Any = ..., min_len: int = 0, minimum: int = 1) -> list[int]:
    value = config.get(field, default)
    kind = config.get("kind")
    if value is ...:
        raise ArchitectureError(f"{kind}: field '{field}' is required (a list of integers)")
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ArchitectureError(f"{kind}: field '{field}' must be a list of integers, got {value!r}")
    if len(value) < min_len or len(value) > MAX_DEPTH:
        raise ArchitectureError(f"{kind}: field '{field}' must have between {min_len} and {MAX_DEPTH} entries, got {len(value)}")
    for v in value:
        if not minimum <= v <= MAX_WIDTH:
            raise ArchitectureError(f"{kind}: every entry of '{field}' must be between {minimum} and {MAX_WIDTH}, got {v}")
    return list(value)


def choice(config: dict[str, Any], field: str, choices: tuple[str, ...], default: str) -> str:
    value = config.get(field, default)
    if value not in choices:
        raise ArchitectureError(f"{config.get('kind')}: field '{field}' must be one of {list(choices)}, got {value!r}")
    return value


def activation(config: dict[str, Any], field: str = "activation", default: str = "relu") -> str:
    return choice(config, field, tuple(ACTIVATIONS), default)


def boolean(config: dict[str, Any], field: str, default: bool) -> bool:
    value = config.get(field, default)
    if not isinstance(value, bool):
        raise ArchitectureError(f"{config.get('kind')}: field '{field}' must be true or false, got {value!r}")
    return value


def reject_unknown(config: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(config) - known - {"kind"})
    if unknown:
        raise ArchitectureError(f"{config.get('kind')}: unknown field(s) {unknown}; known fields: {sorted(known)}")


# ---------------------------------------------------------------------------------------------
# state_dict entries of the standard torch.nn layers, in the order torch lists them.


def linear(spec: dict[str, TensorSpec], prefix: str, fan_in: int, fan_out: int, bias: bool = True) -> None:
    spec[f"{prefix}weight"] = TensorSpec((fan_out, fan_in), True)
    if bias:
        spec[f"{prefix}bias"] = TensorSpec((fan_out,), True)


def conv2d(spec: dict[str, TensorSpec], prefix: str, c_in: int, c_out: int, k: int, bias: bool) -> None:
    spec[f"{prefix}weight"] = TensorSpec((c_out, c_in, k, k), True)
    if bias:
        spec[f"{prefix}bias"] = TensorSpec((c_out,), True)


def batch_norm(spec: dict[str, TensorSpec], prefix: str, channels: int) -> None:
    spec[f"{prefix}weight"] = TensorSpec((channels,), True)
    spec[f"{prefix}bias"] = TensorSpec((channels,), True)
    spec[f"{prefix}running_mean"] = TensorSpec((channels,), False)
    spec[f"{prefix}running_var"] = TensorSpec((channels,), False)
    spec[f"{prefix}num_batches_tracked"] = TensorSpec((), False, integer=True)


def layer_norm(spec: dict[str, TensorSpec], prefix: str, d: int) -> None:
    spec[f"{prefix}weight"] = TensorSpec((d,), True)
    spec[f"{prefix}bias"] = TensorSpec((d,), True)


def activation_module(name: str) -> Any:
    """A fresh ``torch.nn`` activation module for a config's activation name."""
    from torch import nn

    return getattr(nn, ACTIVATIONS[name])()
