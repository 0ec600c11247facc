"""What every SG-MCMC kernel here is: the protocol, the state's shape, and the localized drift.

The target is the localized tempered posterior ``exp(-U(w))``, ``U(w) = nβ L(w) + γ/2 ||w - w*||²``.
A kernel is built once per run from the posterior's constants (``build(gamma, nbeta, w_star, ...)``)
and is a pair of functions over a tree (dict) of stacked per-chain parameters, leading dim = chains:

- ``init(params, noise, epsilon) -> state``
- ``update(state, grads, noise, epsilon) -> state``: one step of size ε, given the minibatch loss
  gradients ``∇L_B`` (same tree) and standard normal noise (same tree). The update is done in
  place on the state's tensors (no per-step allocation beyond the kernel's own scratch) and the
  same state is returned. ε is an argument, not a build constant, because warm-up changes it.

Randomness stays outside: the caller draws the noise from each chain's own generator, so a kernel is
a deterministic function of its inputs, which is what makes runs bit-identical however chains are
batched. ``drift_scale(state)`` is the per-coordinate multiplier of the step (None: 1), which the
MALA acceptance diagnostic needs; ``freeze(state)`` fixes whatever the kernel adapts (the estimator
calls it at the end of burn-in, so the sampling phase is a time-homogeneous chain).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch

Tree = dict[str, torch.Tensor]
S = TypeVar("S")


class InitFn(Protocol[S]):
    def __call__(self, params: Tree, noise: Tree, epsilon: float) -> S: ...


class UpdateFn(Protocol[S]):
    def __call__(self, state: S, grads: Tree, noise: Tree, epsilon: float) -> S: ...


def no_drift_scale(state: Any) -> None:
    return None


def no_freeze(state: Any) -> None:
    return None


@dataclass(frozen=True)
class Kernel(Generic[S]):
    init: InitFn[S]
    update: UpdateFn[S]
    drift_scale: Callable[[S], Tree | None] = no_drift_scale
    freeze: Callable[[S], None] = no_freeze


def localized_drift(grad: torch.Tensor, w: torch.Tensor, w_star: torch.Tensor, nbeta: float, gamma: float) -> torch.Tensor:
    """∇U(w) = nβ ∇L(w) + γ (w - w*), as a new tensor.

    The kernels' in-place updates compute the same quantity fused into their step (no temporary
    of the parameters' size); each keeps its own order of operations, which fixes its rounding.
    """
    return torch.sub(w, w_star).mul_(gamma).add_(grad, alpha=nbeta)


def select_chains(state: Any, index: torch.Tensor, rows: int, params: Tree) -> Any:
    """The kernel state restricted to some chains (tensors whose leading dim is the chain dim),
    with ``params`` as its parameters."""

    def pick(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows:
            return value[index].clone()
        if isinstance(value, dict):
            return {k: pick(v) for k, v in value.items()}
        return value

    fields = {f.name: pick(getattr(state, f.name)) for f in dataclasses.fields(state)}
    fields["params"] = params
    return type(state)(**fields)
