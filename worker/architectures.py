"""Build the ``torch.nn`` module for a built-in architecture config (see ``api/architectures.py``).

The API checks uploads against ``api.architectures.state_dict_spec`` without torch; the modules built
here must have exactly that state_dict (a test compares them over many configs). Every module is the
natural ``torch.nn`` construction, so a state_dict saved from a user's own ``nn.Sequential`` MLP
loads as is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from api.architectures import normalize


def _activation(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "gelu": nn.GELU,
        "sigmoid": nn.Sigmoid,
        "silu": nn.SiLU,
        "identity": nn.Identity,
    }[name]()


def build_model(architecture: dict[str, Any]) -> nn.Module:
    """The module for ``architecture`` (validated and defaults filled first), freshly initialised."""
    config = normalize(architecture)
    return _BUILDERS[config["kind"]](config)


def _build_mlp(c: dict[str, Any]) -> nn.Module:
    widths = [c["in_features"], *c["hidden"], c["out_features"]]
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=c["bias"]))
        if i < len(widths) - 2:
            layers.append(_activation(c["activation"]))
    return nn.Sequential(*layers)


def _build_dln(c: dict[str, Any]) -> nn.Module:
    widths = c["widths"]
    return nn.Sequential(*[nn.Linear(widths[i], widths[i + 1], bias=False) for i in range(len(widths) - 1)])


def _build_cnn(c: dict[str, Any]) -> nn.Module:
    layers: list[nn.Module] = []
    c_in = c["in_channels"]
    height, width = c["image_size"]
    k = c["kernel_size"]
    for c_out in c["channels"]:
        layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2), _activation(c["activation"])]
        if c["pool"]:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        c_in = c_out
    layers.append(nn.Flatten())
    widths = [c_in * height * width, *c["hidden"], c["num_classes"]]
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(_activation(c["activation"]))
    return nn.Sequential(*layers)


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
        width = c["width"]
        self.stem = nn.Sequential(
            nn.Conv2d(c["in_channels"], width, 3, padding=1, bias=not batch_norm),
            nn.BatchNorm2d(width) if batch_norm else nn.Identity(),
            nn.ReLU(),
        )
        stages = []
        c_in = width
        for s, num_blocks in enumerate(c["blocks"]):
            c_out = width * 2**s
            blocks = []
            for b in range(num_blocks):
                blocks.append(BasicBlock(c_in, c_out, 2 if (s > 0 and b == 0) else 1, batch_norm))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, c["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention written out with matmuls (works under torch.func.vmap/grad)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape
        head_dim = d_model // self.n_heads
        q, k, v = self.qkv(x).split(d_model, dim=-1)
        q, k, v = (t.reshape(batch, seq, self.n_heads, head_dim).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / head_dim**0.5
        future = torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, seq, d_model))


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class DecoderLM(nn.Module):
    """A small GPT-style language model: token ids [batch, seq] -> logits [batch, seq, vocab]."""

    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.context_length = c["context_length"]
        self.token_embedding = nn.Embedding(c["vocab_size"], c["d_model"])
        self.position_embedding = nn.Embedding(c["context_length"], c["d_model"])
        self.blocks = nn.ModuleList(
            TransformerBlock(c["d_model"], c["n_heads"], c["d_ff"]) for _ in range(c["n_layers"])
        )
        self.ln_f = nn.LayerNorm(c["d_model"])
        self.lm_head = nn.Linear(c["d_model"], c["vocab_size"], bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.shape[-1]
        if seq > self.context_length:
            raise ValueError(f"sequence length {seq} exceeds the model's context_length {self.context_length}")
        positions = torch.arange(seq, device=tokens.device)
        x = self.token_embedding(tokens.long()) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


_BUILDERS = {
    "mlp": _build_mlp,
    "dln": _build_dln,
    "cnn": _build_cnn,
    "resnet": ResNet,
    "transformer": DecoderLM,
}
