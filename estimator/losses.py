"""Loss functions by name. Every loss returns the *mean* per-sample loss of a batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import LOSSES as LOSS_NAMES

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


LOSSES: dict[str, LossFn] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,
    "nll": _nll,
    "bce_with_logits": _bce_with_logits,
}
if tuple(LOSSES) != LOSS_NAMES:
    raise ImportError(f"estimator.config.LOSSES {LOSS_NAMES} and the loss table {tuple(LOSSES)} disagree")

# Targets of these losses are class indices: never cast them to the float dtype of the chains.
INTEGER_TARGET_LOSSES = ("cross_entropy", "nll")


def resolve_loss(loss: str | LossFn) -> tuple[str, LossFn]:
    """(name, function) for a loss name or a callable ``(outputs, targets) -> mean loss``."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)} or a callable")
        return loss, LOSSES[loss]
    if callable(loss):
        return getattr(loss, "__name__", "callable"), loss
    raise ValueError(f"loss must be a name ({', '.join(LOSSES)}) or a callable; got {type(loss).__name__}")
