"""``transformer``: a small decoder-only language model (GPT-style, pre-norm).

Config (defaults in brackets): ``vocab_size``, ``context_length``, ``d_model``, ``n_layers``,
``n_heads`` (divides d_model), ``d_ff`` [4 * d_model]. Modules ``token_embedding``,
``position_embedding``, ``blocks.{i}`` (``ln1``, ``attn.qkv``, ``attn.proj``, ``ln2``, ``mlp.0``,
``mlp.2``; GELU MLP, causal self-attention), ``ln_f``, ``lm_head`` (no bias, not tied). Input token
ids ``[batch, seq]`` (seq <= context_length), output logits ``[batch, seq, vocab_size]``.
"""

from __future__ import annotations

import functools
from typing import Any

from . import fields
from .fields import MAX_DEPTH, ArchitectureError, TensorSpec

KIND = "transformer"


def normalize(c: dict[str, Any]) -> dict[str, Any]:
    fields.reject_unknown(c, {"vocab_size", "context_length", "d_model", "n_layers", "n_heads", "d_ff"})
    out = {
        "kind": KIND,
        "vocab_size": fields.integer(c, "vocab_size"),
        "context_length": fields.integer(c, "context_length"),
        "d_model": fields.integer(c, "d_model"),
        "n_layers": fields.integer(c, "n_layers", maximum=MAX_DEPTH),
        "n_heads": fields.integer(c, "n_heads", maximum=4096),
    }
    out["d_ff"] = fields.integer(c, "d_ff", default=4 * out["d_model"])
    if out["d_model"] % out["n_heads"]:
        raise ArchitectureError(f"transformer: d_model ({out['d_model']}) must be divisible by n_heads ({out['n_heads']})")
    return out


def state_dict_spec(c: dict[str, Any]) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    d, v = c["d_model"], c["vocab_size"]
    spec["token_embedding.weight"] = TensorSpec((v, d), True)
    spec["position_embedding.weight"] = TensorSpec((c["context_length"], d), True)
    for i in range(c["n_layers"]):
        prefix = f"blocks.{i}."
        fields.layer_norm(spec, prefix + "ln1.", d)
        fields.linear(spec, prefix + "attn.qkv.", d, 3 * d)
        fields.linear(spec, prefix + "attn.proj.", d, d)
        fields.layer_norm(spec, prefix + "ln2.", d)
        fields.linear(spec, prefix + "mlp.0.", d, c["d_ff"])
        fields.linear(spec, prefix + "mlp.2.", c["d_ff"], d)
    fields.layer_norm(spec, "ln_f.", d)
    fields.linear(spec, "lm_head.", d, v, bias=False)
    return spec


def build(c: dict[str, Any]) -> Any:
    return _module_class()(c)


@functools.cache
def _module_class() -> type:
    """The ``nn.Module`` classes, defined on the first build so that validating a config never imports
    torch. Defined once per process: the estimator's graph cache keys models by their module classes."""
    import torch
    from torch import nn

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
        """Token ids [batch, seq] -> logits [batch, seq, vocab]."""

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

    return DecoderLM
