"""SGLD exactly as in Lau et al. (llc-theory.md §1)::

w <- w - (ε/2) (nβ ∇L_B(w) + γ (w - w*)) + N(0, ε I)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

Tree = dict[str, torch.Tensor]


class SGLDState(NamedTuple):
    params: Tree


class SGLDKernel(NamedTuple):
    init: object
    update: object
    drift_scale: object  # per-coordinate step multiplier (1 for plain SGLD), for MALA and curvature


def build(epsilon: float, gamma: float, nbeta: float, w_star: Tree) -> SGLDKernel:
    pull = epsilon * gamma / 2  # weight of the localizing pull towards w*
    grad_step = -epsilon * nbeta / 2
    noise_scale = math.sqrt(epsilon)

    def init(params: Tree, noise: Tree | None = None) -> SGLDState:
        return SGLDState(params)

    def update(state: SGLDState, grads: Tree, noise: Tree) -> SGLDState:
        for name, w in state.params.items():
            # w - (εγ/2)(w - w*)  ==  lerp(w, w*, εγ/2)
            w.lerp_(w_star[name], pull)
            w.add_(grads[name], alpha=grad_step)
            w.add_(noise[name], alpha=noise_scale)
        return state

    def drift_scale(state: SGLDState) -> None:
        return None

    return SGLDKernel(init, update, drift_scale)
