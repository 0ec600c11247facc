"""``dln`` (deep linear network): an ``nn.Sequential`` of bias-free ``Linear(widths[i], widths[i+1])``.

Config: ``widths`` (at least two). state_dict keys ``0.weight``, ``1.weight``, ... Deep linear
networks have exact learning coefficients (Aoyagi), so they anchor the validation battery.
"""

from __future__ import annotations

from typing import Any

from . import fields
from .fields import TensorSpec

KIND = "dln"


def normalize(c: dict[str, Any]) -> dict[str, Any]:
    fields.reject_unknown(c, {"widths"})
    return {"kind": KIND, "widths": fields.integer_list(c, "widths", min_len=2)}


def state_dict_spec(c: dict[str, Any]) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    widths = c["widths"]
    for i in range(len(widths) - 1):
        fields.linear(spec, f"{i}.", widths[i], widths[i + 1], bias=False)
    return spec


def build(c: dict[str, Any]) -> Any:
    from torch import nn

    widths = c["widths"]
    return nn.Sequential(*[nn.Linear(widths[i], widths[i + 1], bias=False) for i in range(len(widths) - 1)])


def infer(model: Any) -> dict[str, Any] | None:
    """The config of an ``nn.Sequential`` of chained bias-free Linear layers and nothing else; else None."""
    from torch import nn

    if not isinstance(model, nn.Sequential) or len(model) == 0:
        return None
    layers = list(model)
    if not all(isinstance(m, nn.Linear) and m.bias is None for m in layers):
        return None
    if any(prev.out_features != nxt.in_features for prev, nxt in zip(layers, layers[1:], strict=False)):
        return None
    return {"kind": KIND, "widths": [layers[0].in_features, *(m.out_features for m in layers)]}
