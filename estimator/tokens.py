"""Token data: ``{"input_ids", "attention_mask"?, "labels"?}`` or a Hugging Face ``datasets.Dataset``,
checked and turned into integer tensors.

A dict holds torch tensors or numpy arrays (or nested lists). A Hugging Face ``Dataset`` is
duck-typed (it has ``column_names`` and column access), so ``datasets`` is never imported; its
other columns (``text``, ...) are ignored.

Default labels: ``causal_lm`` (and a callable loss) predicts the input itself, so the labels are
``input_ids`` with the padding positions (``attention_mask == 0``) set to ``IGNORE_INDEX``; every
other loss needs ``labels`` (``masked_lm``: which positions are masked and their true tokens;
``cross_entropy``: one class per sequence, shape [N]).

What the model sees: a transformers model gets the ids and the attention mask (packed as
[N, 2, T] and unpacked by estimator.hf.HFLogits); any other module gets the ids [N, T] alone, and
the mask then only sets the padding labels (such a module has no way to take a mask).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .losses import IGNORE_INDEX, TOKEN_LOSSES

TOKEN_FIELDS = ("input_ids", "attention_mask", "labels")


@dataclass(frozen=True)
class TokenData:
    input_ids: torch.Tensor  # int64 [N, T]
    attention_mask: torch.Tensor | None  # int64 [N, T] of 0/1, or None (every position is a token)
    labels: torch.Tensor  # int64 [N, T] (IGNORE_INDEX: not a target) or [N] (sequence classes)


def is_token_data(data: Any) -> bool:
    """A mapping (token fields by name) or a Hugging Face ``Dataset`` (it has ``column_names``)."""
    return isinstance(data, Mapping) or _is_hf_dataset(data)


def _is_hf_dataset(data: Any) -> bool:
    return hasattr(data, "column_names") and hasattr(data, "__getitem__") and not isinstance(data, Mapping)


def token_data(data: Any, loss_name: str) -> TokenData:
    """Check token data and return its tensors, with default labels where the loss allows them."""
    fields = _hf_dataset_fields(data) if _is_hf_dataset(data) else _mapping_fields(data)
    input_ids = _integer_tensor(fields["input_ids"], "input_ids")
    if input_ids.dim() != 2:
        raise ValueError(
            f"token data: input_ids must have shape [sequences, tokens]; got {tuple(input_ids.shape)}"
        )
    n, t = input_ids.shape
    if n < 2:
        raise ValueError(f"token data: need at least 2 sequences to estimate an LLC; got {n}")
    if t < 1:
        raise ValueError("token data: input_ids has sequences of length 0")
    if int(input_ids.min()) < 0:
        raise ValueError(f"token data: input_ids holds a negative token id ({int(input_ids.min())})")

    mask = None
    if fields.get("attention_mask") is not None:
        mask = _integer_tensor(fields["attention_mask"], "attention_mask")
        if mask.shape != input_ids.shape:
            raise ValueError(
                f"token data: attention_mask has shape {tuple(mask.shape)} but input_ids has {tuple(input_ids.shape)}; "
                "they must match"
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("token data: attention_mask must hold only 0 (padding) and 1 (token)")
        if not bool((mask.sum(dim=1) > 0).all()):
            raise ValueError("token data: a sequence has attention_mask all 0 (no token at all)")

    if fields.get("labels") is not None:
        labels = _integer_tensor(fields["labels"], "labels")
        if labels.shape[:1] != (n,) or labels.dim() not in (1, 2):
            raise ValueError(
                f"token data: labels must have shape [{n}] (one class per sequence) or [{n}, {t}] "
                f"(one per token); got {tuple(labels.shape)}"
            )
        if labels.dim() == 2 and labels.shape != input_ids.shape:
            raise ValueError(
                f"token data: labels has shape {tuple(labels.shape)} but input_ids has {tuple(input_ids.shape)}; "
                "they must match"
            )
        if loss_name in TOKEN_LOSSES and labels.dim() != 2:
            raise ValueError(
                f"loss {loss_name!r} needs one label per token (labels of shape [{n}, {t}]); got labels of "
                f"shape {tuple(labels.shape)} (one class per sequence is for loss 'cross_entropy')"
            )
        if loss_name == "cross_entropy" and labels.dim() != 1:
            raise ValueError(
                f"loss 'cross_entropy' on token data takes one class per sequence (labels of shape [{n}]); got "
                f"labels of shape {tuple(labels.shape)}: for one label per token use 'masked_lm' (each position "
                "predicts its own label) or 'causal_lm' (each position predicts the next token)"
            )
        bad = (labels < 0) & (labels != IGNORE_INDEX)
        if bool(bad.any()):
            raise ValueError(
                f"token data: labels holds a negative value other than {IGNORE_INDEX} (the 'not a target' label)"
            )
    elif loss_name == "causal_lm" or loss_name not in _NAMED_LOSSES:
        labels = input_ids.clone()
        if mask is not None:
            labels[mask == 0] = IGNORE_INDEX
    else:
        need = {
            "masked_lm": "the true token at each masked position and -100 elsewhere",
            "cross_entropy": "one class per sequence, shape [N]",
        }.get(loss_name, "the targets of the loss")
        raise ValueError(
            f"token data: loss {loss_name!r} needs 'labels' ({need}); only 'causal_lm' derives labels "
            "from input_ids"
        )
    return TokenData(input_ids=input_ids, attention_mask=mask, labels=labels)


# Callable losses get the causal default (labels = input_ids); named losses other than causal_lm
# need labels.
_NAMED_LOSSES = ("cross_entropy", "mse", "nll", "bce_with_logits", "causal_lm", "masked_lm")


def _mapping_fields(data: Mapping) -> dict[str, Any]:
    keys = [str(k) for k in data]
    unknown = sorted(k for k in keys if k not in TOKEN_FIELDS)
    if unknown:
        raise ValueError(
            f"token data: unknown field(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(TOKEN_FIELDS)} "
            "(drop the others)"
        )
    if "input_ids" not in data:
        raise ValueError(
            f"token data: a dict of data needs an 'input_ids' entry (integer [sequences, tokens]); got keys "
            f"{', '.join(map(repr, keys)) or 'none'}"
        )
    return {k: data[k] for k in TOKEN_FIELDS if k in data}


def _hf_dataset_fields(dataset: Any) -> dict[str, Any]:
    columns = list(dataset.column_names)
    if "input_ids" not in columns:
        raise ValueError(
            f"token data: the Dataset needs an 'input_ids' column; its columns are {', '.join(columns) or 'none'} "
            "(tokenize it first, e.g. dataset.map(tokenizer, batched=True))"
        )
    out: dict[str, Any] = {}
    for name in TOKEN_FIELDS:
        if name not in columns:
            continue
        column = dataset[name]
        rows = [np.asarray(row) for row in column]
        lengths = {row.shape for row in rows}
        if len(lengths) > 1:
            raise ValueError(
                f"token data: column {name!r} holds sequences of different lengths "
                f"({', '.join(str(s[0]) if s else 'scalar' for s in sorted(lengths)[:4])}...); pad them to one "
                "length (tokenizer(..., padding='max_length')) and give attention_mask"
            )
        out[name] = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)
    return out


def _integer_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    else:
        try:
            array = np.asarray(value)
        except ValueError:  # numpy refuses inhomogeneous nested lists
            array = np.empty(0, dtype=object)
        if array.dtype == object:
            raise ValueError(
                f"token data: {name} is ragged (sequences of different lengths); pad them to one length "
                "and give attention_mask"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        if name == "attention_mask" and tensor.dtype == torch.bool:
            return tensor.to(torch.int64)
        raise ValueError(f"token data: {name} must hold integers; got dtype {tensor.dtype}")
    return tensor.to(torch.int64)


def model_inputs(tokens: TokenData, pack_attention_mask: bool) -> torch.Tensor:
    """The model input tensor: the ids [N, T], or ids and mask packed as [N, 2, T] for a model
    wrapper that unpacks them (estimator.hf.HFLogits) so that minibatch rows keep both together."""
    if pack_attention_mask and tokens.attention_mask is not None:
        return torch.stack([tokens.input_ids, tokens.attention_mask], dim=1)
    return tokens.input_ids
