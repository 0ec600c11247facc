"""Loss functions by name. Every loss returns the *mean* per-sample loss of a batch.

The language-model losses average over the counted tokens of the batch instead (positions whose
label is not ``IGNORE_INDEX``): ``causal_lm`` predicts token t+1 from the logits at t,
``masked_lm`` predicts each labelled position from its own logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import LOSSES as LOSS_NAMES

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Label of a position that is not a prediction target (padding, unmasked tokens): the
# Hugging Face convention.
IGNORE_INDEX = -100


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # A (batch,) target against a (batch, 1) output is the common single-output regression layout.
    if outputs.dim() == targets.dim() + 1 and outputs.shape[-1] == 1:
        outputs = outputs.squeeze(-1)
    return F.mse_loss(outputs, targets)


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets)


def _nll(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(outputs, targets)


def _bce_with_logits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if outputs.dim() == targets.dim() + 1 and outputs.shape[-1] == 1:
        outputs = outputs.squeeze(-1)
    return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype))


def _token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the positions whose label is not IGNORE_INDEX.

    The count is clamped to 1 so that a minibatch with no counted token gives 0, not NaN (NaN
    would read as a divergence); no data-dependent branch, so it runs under vmap and tracing.
    """
    if logits.dim() != labels.dim() + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"a language-model loss needs logits [batch, seq, vocab] and labels [batch, seq]; got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    counted = (labels != IGNORE_INDEX).sum().clamp_min(1)
    return total / counted.to(total.dtype)


def _causal_lm(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Position t predicts token t+1: drop the last logits and the first labels.
    return _token_cross_entropy(outputs[..., :-1, :], targets[..., 1:])


def _masked_lm(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _token_cross_entropy(outputs, targets)


LOSSES: dict[str, LossFn] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,
    "nll": _nll,
    "bce_with_logits": _bce_with_logits,
    "causal_lm": _causal_lm,
    "masked_lm": _masked_lm,
}
if tuple(LOSSES) != LOSS_NAMES:
    raise ImportError(f"estimator.config.LOSSES {LOSS_NAMES} and the loss table {tuple(LOSSES)} disagree")

# Targets of these losses are class or token indices: never cast them to the float dtype of the chains.
INTEGER_TARGET_LOSSES = ("cross_entropy", "nll", "causal_lm", "masked_lm")
# Losses over token sequences (logits [B, T, V], labels [B, T]).
TOKEN_LOSSES = ("causal_lm", "masked_lm")


def resolve_loss(loss: str | LossFn) -> tuple[str, LossFn]:
    """(name, function) for a loss name or a callable ``(outputs, targets) -> mean loss``."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)} or a callable")
        return loss, LOSSES[loss]
    if callable(loss):
        return getattr(loss, "__name__", "callable"), loss
    raise ValueError(f"loss must be a name ({', '.join(LOSSES)}) or a callable; got {type(loss).__name__}")
