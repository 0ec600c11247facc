"""RMSprop-preconditioned SGLD (Hitchcock & Hoogland 2025; devinterp's RMSpropPreconditioner)::

    V <- α V + (1 - α) g²                 g = ∇L_B(w), the loss gradient only (localizer excluded)
    M  = 1 / (sqrt(V / (1 - α^t)) + δ)    per coordinate
    w <- w - (ε/2) M (nβ g + γ (w - w*)) + N(0, ε M)

A preconditioner that keeps changing makes the chain sample a slightly wrong distribution (the
correction term of state-dependent preconditioning is dropped, as in the reference library). So
``freeze(state)`` fixes M, and the estimator freezes it at the end of burn-in: the sampling phase
is then an exact preconditioned Langevin discretisation with a constant diagonal metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Kernel, Tree


@dataclass
class RMSpropSGLDState:
    params: Tree
    square_avg: Tree
    precond: Tree  # M, recomputed every step until frozen
    step: int = 0
    frozen: bool = False


def build(
    gamma: float, nbeta: float, w_star: Tree, alpha: float = 0.99, delta: float = 0.1
) -> Kernel[RMSpropSGLDState]:
    def init(params: Tree, noise: Tree | None = None, epsilon: float | None = None) -> RMSpropSGLDState:
        return RMSpropSGLDState(
            params=params,
            square_avg={k: torch.zeros_like(v) for k, v in params.items()},
            precond={k: torch.full_like(v, 1.0 / delta) for k, v in params.items()},
        )

    def update(state: RMSpropSGLDState, grads: Tree, noise: Tree, epsilon: float) -> RMSpropSGLDState:
        if not state.frozen:
            state.step += 1
            correction = 1.0 - alpha**state.step
            for name, g in grads.items():
                v = state.square_avg[name]
                v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
                m = state.precond[name]
                torch.div(v, correction, out=m)
                m.sqrt_().add_(delta).reciprocal_()
        half_eps = epsilon / 2
        for name, w in state.params.items():
            m = state.precond[name]
            drift = torch.add(grads[name], w - w_star[name], alpha=gamma / nbeta).mul_(nbeta)
            w.addcmul_(m, drift, value=-half_eps)
            w.addcmul_(m.sqrt(), noise[name], value=epsilon**0.5)
        return state

    def drift_scale(state: RMSpropSGLDState) -> Tree:
        return state.precond

    def freeze(state: RMSpropSGLDState) -> None:
        state.frozen = True

    return Kernel(init, update, drift_scale, freeze)
