"""``mlp``: ``nn.Sequential(Linear, Act, Linear, Act, ..., Linear)``.

Config (defaults in brackets): ``in_features``, ``hidden`` (list, may be empty), ``out_features``,
``activation`` [relu], ``bias`` [true]. state_dict keys ``0.weight``, ``0.bias``, ``2.weight``, ...
Input ``[batch, in_features]``, output ``[batch, out_features]``. A state_dict saved from a user's
own ``nn.Sequential`` of that layout loads as is, and such a module is recognised by :func:`infer`.
"""

from __future__ import annotations

from typing import Any

from . import fields
from .fields import ACTIVATIONS, TensorSpec

KIND = "mlp"

_HINT = (
    "pass architecture={...} explicitly, e.g. "
    '{"kind": "mlp", "in_features": 16, "hidden": [32], "out_features": 3, "activation": "relu"}'
)


def normalize(c: dict[str, Any]) -> dict[str, Any]:
    fields.reject_unknown(c, {"in_features", "hidden", "out_features", "activation", "bias"})
    return {
        "kind": KIND,
        "in_features": fields.integer(c, "in_features"),
        "hidden": fields.integer_list(c, "hidden", default=[]),
        "out_features": fields.integer(c, "out_features"),
        "activation": fields.activation(c),
        "bias": fields.boolean(c, "bias", True),
    }


def _widths(c: dict[str, Any]) -> list[int]:
    return [c["in_features"], *c["hidden"], c["out_features"]]


def state_dict_spec(c: dict[str, Any]) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    widths = _widths(c)
    for i in range(len(widths) - 1):
        # Linear at even indices, activation modules (no parameters) at odd ones.
        fields.linear(spec, f"{2 * i}.", widths[i], widths[i + 1], c["bias"])
    return spec


def build(c: dict[str, Any]) -> Any:
    from torch import nn

    widths = _widths(c)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=c["bias"]))
        if i < len(widths) - 2:
            layers.append(fields.activation_module(c["activation"]))
    return nn.Sequential(*layers)


def infer(model: Any) -> dict[str, Any] | None:
    """The config of an ``nn.Sequential`` of Linear layers with one activation between each two.

    None for a module that is not a non-empty ``nn.Sequential``; a ``ValueError`` saying what differs
    for a Sequential that is close to an mlp but not one.
    """
    from torch import nn

    if not isinstance(model, nn.Sequential) or len(model) == 0:
        return None
    layers = list(model)
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    others = [m for m in layers if not isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot infer an architecture: the Sequential has no Linear layer; {_HINT}")
    for prev, nxt in zip(linears, linears[1:], strict=False):
        if prev.out_features != nxt.in_features:
            raise ValueError(f"Linear layers do not chain: {prev} feeds {nxt}")
    widths = [linears[0].in_features, *(m.out_features for m in linears)]
    has_bias = {m.bias is not None for m in linears}
    if len(has_bias) > 1:
        raise ValueError(f"cannot infer an architecture: some Linear layers have biases and some do not; {_HINT}")
    layout_ok = len(layers) == 2 * len(linears) - 1 and all(
        isinstance(m, nn.Linear) == (i % 2 == 0) for i, m in enumerate(layers)
    )
    if not layout_ok:
        raise ValueError(
            "cannot infer an architecture: an mlp must be Sequential(Linear, activation, Linear, ..., Linear) "
            f"with one activation between consecutive Linear layers and none after the last; {_HINT}"
        )
    return {
        "kind": KIND,
        "in_features": widths[0],
        "hidden": widths[1:-1],
        "out_features": widths[-1],
        "activation": _activation_name(others),
        "bias": has_bias.pop(),
    }


def _activation_name(activations: list[Any]) -> str:
    class_names = {type(m).__name__ for m in activations}
    if len(class_names) > 1:
        raise ValueError(f"cannot infer an architecture: mixed activations {sorted(class_names)}; {_HINT}")
    if not activations:
        return "relu"  # a single Linear layer: no activation is ever applied
    class_name = class_names.pop()
    by_class = {cls: name for name, cls in ACTIVATIONS.items()}
    if class_name not in by_class:
        raise ValueError(
            f"cannot infer an architecture: activation {class_name} is not one of the built-in ones "
            f"({', '.join(by_class)}); {_HINT}"
        )
    if class_name == "GELU" and getattr(activations[0], "approximate", "none") != "none":
        raise ValueError(f"cannot infer an architecture: the built-in mlp uses exact GELU, not approximate='tanh'; {_HINT}")
    return by_class[class_name]
