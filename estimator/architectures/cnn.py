"""``cnn``: convolution blocks, then a fully connected head, as one ``nn.Sequential``.

Config (defaults in brackets): ``in_channels``, ``image_size`` (int or ``[height, width]``),
``channels`` (list, one conv block each), ``kernel_size`` [3, odd], ``pool`` [true], ``hidden`` [[]],
``num_classes``, ``activation`` [relu]. Per block ``Conv2d(c_in, c, k, padding=k//2)``, Act and (if
``pool``) ``MaxPool2d(2)``; then ``Flatten``; then ``Linear``/Act per hidden width; then
``Linear(.., num_classes)``. Input ``[batch, in_channels, height, width]``.
"""

from __future__ import annotations

from typing import Any

from . import fields
from .fields import ArchitectureError, TensorSpec

KIND = "cnn"


def normalize(c: dict[str, Any]) -> dict[str, Any]:
    fields.reject_unknown(c, {"in_channels", "image_size", "channels", "kernel_size", "pool", "hidden", "num_classes", "activation"})
    out = {
        "kind": KIND,
        "in_channels": fields.integer(c, "in_channels"),
        "image_size": _image_size(c),
        "channels": fields.integer_list(c, "channels", min_len=1),
        "kernel_size": fields.integer(c, "kernel_size", default=3, maximum=31),
        "pool": fields.boolean(c, "pool", True),
        "hidden": fields.integer_list(c, "hidden", default=[]),
        "num_classes": fields.integer(c, "num_classes"),
        "activation": fields.activation(c),
    }
    if out["kernel_size"] % 2 == 0:
        raise ArchitectureError(f"cnn: field 'kernel_size' must be odd (padding keeps the image size), got {out['kernel_size']}")
    height, width = _feature_map(out)
    if height < 1 or width < 1:
        raise ArchitectureError(
            f"cnn: image_size {out['image_size']} is too small for {len(out['channels'])} pooling blocks "
            "(each halves it); use fewer channels entries or pool: false"
        )
    return out


def _image_size(c: dict[str, Any]) -> list[int]:
    value = c.get("image_size", ...)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not (isinstance(value, list) and len(value) == 2):
        raise ArchitectureError(f"cnn: field 'image_size' must be an integer or [height, width], got {value!r}")
    return fields.integer_list({"kind": KIND, "image_size": value}, "image_size", min_len=2)


def _feature_map(c: dict[str, Any]) -> tuple[int, int]:
    """Height and width of the last conv block's output."""
    height, width = c["image_size"]
    if c["pool"]:
        for _ in c["channels"]:
            height, width = height // 2, width // 2
    return height, width


def _head_widths(c: dict[str, Any]) -> list[int]:
    height, width = _feature_map(c)
    return [c["channels"][-1] * height * width, *c["hidden"], c["num_classes"]]


def state_dict_spec(c: dict[str, Any]) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    index = 0
    c_in = c["in_channels"]
    for c_out in c["channels"]:
        fields.conv2d(spec, f"{index}.", c_in, c_out, c["kernel_size"], bias=True)
        index += 3 if c["pool"] else 2  # conv, activation[, pool]
        c_in = c_out
    index += 1  # Flatten
    widths = _head_widths(c)
    for i in range(len(widths) - 1):
        fields.linear(spec, f"{index}.", widths[i], widths[i + 1])
        index += 2
    return spec


def build(c: dict[str, Any]) -> Any:
    from torch import nn

    layers: list[nn.Module] = []
    c_in = c["in_channels"]
    k = c["kernel_size"]
    for c_out in c["channels"]:
        layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2), fields.activation_module(c["activation"])]
        if c["pool"]:
            layers.append(nn.MaxPool2d(2))
        c_in = c_out
    layers.append(nn.Flatten())
    widths = _head_widths(c)
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(fields.activation_module(c["activation"]))
    return nn.Sequential(*layers)
