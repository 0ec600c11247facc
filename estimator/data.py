"""Turning the user's data into two tensors on the sampling device."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .losses import INTEGER_TARGET_LOSSES


def materialise(data) -> tuple[torch.Tensor, torch.Tensor]:
    """An ``(inputs, targets)`` pair of tensors from a pair or from a Dataset yielding pairs.

    A Dataset is read once, in index order, and stacked: the sampler draws its own minibatches
    (one order per chain), so it needs random access to every sample.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, targets = data
    elif isinstance(data, Dataset):
        inputs, targets = _stack_dataset(data)
    elif isinstance(data, (tuple, list)):
        raise ValueError(
            "data must be an (inputs, targets) pair of tensors or a torch Dataset yielding pairs; "
            f"got a {type(data).__name__} of length {len(data)} holding "
            f"{', '.join(type(t).__name__ for t in data)}"
        )
    else:
        raise ValueError(
            "data must be an (inputs, targets) pair of tensors or a torch Dataset yielding pairs; "
            f"got {type(data).__name__}"
        )
    if inputs.dim() == 0 or targets.dim() == 0:
        raise ValueError("data: inputs and targets need a leading sample dimension")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"data: inputs have {inputs.shape[0]} samples but targets have {targets.shape[0]}; they must match"
        )
    if inputs.shape[0] < 2:
        raise ValueError(f"data: need at least 2 samples to estimate an LLC; got {inputs.shape[0]}")
    return inputs, targets


def _stack_dataset(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(
            "data: a Dataset must have a length (an IterableDataset cannot be sampled from)"
        ) from exc
    if n == 0:
        raise ValueError("data: the Dataset is empty")
    xs, ys = [], []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(
                f"data: Dataset item {i} must be an (input, target) pair; got {type(item).__name__}"
            )
        x, y = item
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y))
    try:
        return torch.stack(xs), torch.stack(ys)
    except RuntimeError as exc:
        raise ValueError(f"data: Dataset items do not all have the same shape ({exc})") from exc


def to_device(
    inputs: torch.Tensor, targets: torch.Tensor, loss_name: str, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Floating inputs (and targets of regression losses) in the chains' dtype, on the device."""
    inputs = inputs.detach()
    targets = targets.detach()
    if inputs.is_floating_point():
        inputs = inputs.to(device=device, dtype=dtype)
    else:
        inputs = inputs.to(device=device)
    if targets.is_floating_point() and loss_name not in INTEGER_TARGET_LOSSES:
        targets = targets.to(device=device, dtype=dtype)
    else:
        targets = targets.to(device=device)
    return inputs.contiguous(), targets.contiguous()
