"""Stochastic gradient Nosé–Hoover thermostat (Ding et al. 2014), in the parametrisation of the
reference library (devinterp's SGNHT: momentum q in units of displacement, one thermostat ξ per
chain)::

    q <- q - ε (nβ ∇L_B(w) + γ (w - w*)) - ξ q + sqrt(2 A ε) N(0, I)
    w <- w + q
    ξ <- ξ + mean(q²) - ε

The thermostat drives the kinetic energy mean(q²) to ε, absorbing unknown gradient noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Kernel, Tree


@dataclass
class SGNHTState:
    params: Tree
    momentum: Tree
    thermostat: torch.Tensor  # (chains,)


def build(gamma: float, nbeta: float, w_star: Tree, diffusion: float = 0.01) -> Kernel[SGNHTState]:
    def init(params: Tree, noise: Tree, epsilon: float) -> SGNHTState:
        first = next(iter(params.values()))
        return SGNHTState(
            params=params,
            momentum={k: noise[k] * math.sqrt(epsilon) for k in params},
            thermostat=torch.full((first.shape[0],), diffusion, dtype=first.dtype, device=first.device),
        )

    def update(state: SGNHTState, grads: Tree, noise: Tree, epsilon: float) -> SGNHTState:
        noise_scale = math.sqrt(2 * diffusion * epsilon)
        energy = torch.zeros_like(state.thermostat)
        count = 0
        for name, w in state.params.items():
            q = state.momentum[name]
            xi = state.thermostat.view(-1, *([1] * (q.dim() - 1)))
            q.sub_(q * xi)
            q.add_(grads[name], alpha=-epsilon * nbeta)
            q.add_(w - w_star[name], alpha=-epsilon * gamma)
            q.add_(noise[name], alpha=noise_scale)
            w.add_(q)
            energy += q.pow(2).flatten(1).sum(1)
            count += q[0].numel()
        state.thermostat.add_(energy / count - epsilon)
        return state

    return Kernel(init, update)
