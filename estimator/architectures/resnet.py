"""``resnet``: a small CIFAR-style residual network.

Config (defaults in brackets): ``in_channels`` [3], ``num_classes``, ``width`` [16], ``blocks`` [[2, 2]]
(basic blocks per stage; stage s has ``width * 2**s`` channels, stride 2 from the second stage on),
``norm`` ["batch"] or "none". Modules ``stem`` (conv, norm, ReLU), ``stages.{s}.{b}`` (``conv1``,
``bn1``, ``conv2``, ``bn2``, ``shortcut``), global average pooling, ``fc``. Any image size. With
batch norm the state_dict also holds the ``running_mean``/``running_var``/``num_batches_tracked``
buffers (they are not parameters).
"""

from __future__ import annotations

import functools
from typing import Any

from . import fields
from .fields import TensorSpec

KIND = "resnet"


def normalize(c: dict[str, Any]) -> dict[str, Any]:
    fields.reject_unknown(c, {"in_channels", "num_classes", "width", "blocks", "norm"})
    return {
        "kind": KIND,
        "in_channels": fields.integer(c, "in_channels", default=3),
        "num_classes": fields.integer(c, "num_classes"),
        "width": fields.integer(c, "width", default=16, maximum=4096),
        "blocks": fields.integer_list(c, "blocks", default=[2, 2], min_len=1),
        "norm": fields.choice(c, "norm", ("batch", "none"), "batch"),
    }


def _blocks(c: dict[str, Any]):
    """(stage, block, c_in, c_out, stride) for every basic block, in order."""
    c_in = c["width"]
    for s, num_blocks in enumerate(c["blocks"]):
        c_out = c["width"] * 2**s
        for b in range(num_blocks):
            yield s, b, c_in, c_out, 2 if (s > 0 and b == 0) else 1
            c_in = c_out


def _out_channels(c: dict[str, Any]) -> int:
    return c["width"] * 2 ** (len(c["blocks"]) - 1)


def state_dict_spec(c: dict[str, Any]) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    batch_norm = c["norm"] == "batch"

    def conv_norm(prefix: str, c_in: int, c_out: int, k: int, norm_prefix: str) -> None:
        fields.conv2d(spec, prefix, c_in, c_out, k, bias=not batch_norm)
        if batch_norm:
            fields.batch_norm(spec, norm_prefix, c_out)

    conv_norm("stem.0.", c["in_channels"], c["width"], 3, "stem.1.")
    for s, b, c_in, c_out, stride in _blocks(c):
        prefix = f"stages.{s}.{b}."
        conv_norm(prefix + "conv1.", c_in, c_out, 3, prefix + "bn1.")
        conv_norm(prefix + "conv2.", c_out, c_out, 3, prefix + "bn2.")
        if stride != 1 or c_in != c_out:
            conv_norm(prefix + "shortcut.0.", c_in, c_out, 1, prefix + "shortcut.1.")
    fields.linear(spec, "fc.", _out_channels(c), c["num_classes"])
    return spec


def build(c: dict[str, Any]) -> Any:
    return _module_class()(c)


@functools.cache
def _module_class() -> type:
    """The ``nn.Module`` classes, defined on the first build so that validating a config never imports
    torch. Defined once per process: the estimator's graph cache keys models by their module classes."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape changes)."""

        def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm)
            self.bn1 = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
            self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=not batch_norm)
            self.bn2 = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
            self.relu = nn.ReLU()
            if stride != 1 or c_in != c_out:
                self.shortcut: nn.Module = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not batch_norm),
                    nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
                )
            else:
                self.shortcut = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            batch_norm = c["norm"] == "batch"
            self.stem = nn.Sequential(
                nn.Conv2d(c["in_channels"], c["width"], 3, padding=1, bias=not batch_norm),
                nn.BatchNorm2d(c["width"]) if batch_norm else nn.Identity(),
                nn.ReLU(),
            )
            stages: list[list[nn.Module]] = [[] for _ in c["blocks"]]
            for s, _, c_in, c_out, stride in _blocks(c):
                stages[s].append(BasicBlock(c_in, c_out, stride, batch_norm))
            self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(_out_channels(c), c["num_classes"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))

    return ResNet
