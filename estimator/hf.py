"""Hugging Face ``transformers`` models in ``estimate_llc``.

A ``PreTrainedModel`` is recognised without importing transformers (its ``config.model_type`` and a
class named ``PreTrainedModel`` in its MRO). The estimator samples a wrapper, :class:`HFLogits`,
whose forward takes one tensor and returns the output's ``.logits``:

- ``x`` of shape ``[B, T]``: token ids, no attention mask;
- ``x`` of shape ``[B, 2, T]``: ids and attention mask packed together (estimator.tokens.model_inputs),
  so that a minibatch of rows keeps each sequence's mask with its ids. This packing is internal.

Attention runs as "eager" during the run: the curvature pass (automatic step size) needs a double
backward (or forward-mode AD), which SDPA's and flash attention's fused CPU kernels do not have.
The model's own setting is restored afterwards.

Tied weights (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) are one parameter:
``named_parameters()`` lists it once, so it is sampled once, and ``functional_call`` (with its
default ``tie_weights=True``) substitutes the sampled value at every place it is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

SAMPLED_ATTENTION = "eager"


def is_hf_model(model: Any) -> bool:
    """A transformers ``PreTrainedModel`` (duck-typed: transformers is not imported)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        return False
    return any(cls.__name__ == "PreTrainedModel" for cls in type(model).__mro__)


def attn_implementation(model: Any) -> str | None:
    config = model.config
    value = getattr(config, "_attn_implementation", None)
    if value is None:
        value = getattr(config, "attn_implementation", None)
    return value if isinstance(value, str) else (None if value is None else str(value))


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[str | None]:
    """Run ``model`` with eager attention inside the block; yields the user's setting (restored after)."""
    original = attn_implementation(model)
    if original == SAMPLED_ATTENTION:
        yield original
        return
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        raise ValueError(
            f"this {type(model).__name__} uses attention {original!r} and cannot be switched to eager attention "
            "(no set_attn_implementation; transformers too old?); the curvature pass needs a double backward that "
            f"fused attention kernels lack. Load it with attn_implementation='eager' "
            f"({type(model).__name__}.from_pretrained(..., attn_implementation='eager')) and pass it again"
        )
    try:
        setter(SAMPLED_ATTENTION)
    except Exception as exc:  # noqa: BLE001 - any refusal becomes a message naming the fix
        raise ValueError(
            f"could not switch this {type(model).__name__} from attention {original!r} to 'eager' ({exc}); the "
            "estimator needs eager attention (the curvature pass needs a double backward that fused attention "
            "kernels lack). Load it with attn_implementation='eager' and pass it again"
        ) from exc
    try:
        yield original
    finally:
        if original is not None:
            with contextlib.suppress(Exception):
                setter(original)


class HFLogits(torch.nn.Module):
    """``model(input_ids, attention_mask).logits`` as a function of one tensor (see the module doc)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            input_ids, attention_mask = x[:, 0], x[:, 1]
        else:
            input_ids, attention_mask = x, None
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True)
        logits = getattr(outputs, "logits", None)
        if logits is None:
            raise ValueError(
                f"{type(self.model).__name__} returned no .logits; pass a model with a head "
                "(…ForCausalLM, …ForMaskedLM, …ForSequenceClassification)"
            )
        return logits


def check_token_data(model: Any, input_ids: torch.Tensor) -> None:
    """Token ids inside the vocabulary and sequences no longer than the context (clear errors
    instead of an index error deep inside the embedding)."""
    config = model.config
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and input_ids.numel() and int(input_ids.max()) >= vocab:
        raise ValueError(
            f"token data: input_ids holds token id {int(input_ids.max())} but the model's vocabulary has "
            f"{vocab} tokens (ids 0..{vocab - 1})"
        )
    context = None
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            context = value
            break
    if context is not None and input_ids.shape[-1] > context:
        raise ValueError(
            f"token data: sequences have {input_ids.shape[-1]} tokens but the model's context length is {context}"
        )
