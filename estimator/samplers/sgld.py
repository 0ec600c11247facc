"""SGLD exactly as in Lau et al. (llc-theory.md §1)::

    w <- w - (ε/2) (nβ ∇L_B(w) + γ (w - w*)) + N(0, ε I)

``noise="lm"`` selects the Leimkuhler–Matthews variant (Leimkuhler & Matthews 2013): the same drift
with the noise ``sqrt(ε) (ξ_k + ξ_{k+1}) / 2``, the average of this step's and the next step's
standard normals. It samples a Gaussian target with exactly the right variance at any stable step
(plain SGLD inflates it by 1/(1 - εa/4)) and has second-order rather than first-order step-size
bias in general, at the same cost per step (one extra buffer of noise per chain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Kernel, Tree


@dataclass
class SGLDState:
    params: Tree
    prev_noise: Tree | None  # the previous step's normals (LM variant only)


def build(gamma: float, nbeta: float, w_star: Tree, noise: str = "iid") -> Kernel[SGLDState]:
    if noise not in ("iid", "lm"):
        raise ValueError(f"SGLD noise must be 'iid' or 'lm'; got {noise!r}")

    def init(params: Tree, first_noise: Tree | None = None, epsilon: float | None = None) -> SGLDState:
        if noise == "lm":
            if first_noise is None:
                raise ValueError("the LM variant needs the first step's noise at init")
            return SGLDState(params, {k: v.clone() for k, v in first_noise.items()})
        return SGLDState(params, None)

    def update(state: SGLDState, grads: Tree, step_noise: Tree, epsilon: float) -> SGLDState:
        pull = epsilon * gamma / 2  # weight of the localizing pull towards w*
        grad_step = -epsilon * nbeta / 2
        noise_scale = math.sqrt(epsilon)
        for name, w in state.params.items():
            # w - (εγ/2)(w - w*)  ==  lerp(w, w*, εγ/2)
            w.lerp_(w_star[name], pull)
            w.add_(grads[name], alpha=grad_step)
            if state.prev_noise is None:
                w.add_(step_noise[name], alpha=noise_scale)
            else:
                prev = state.prev_noise[name]
                prev.add_(step_noise[name])
                w.add_(prev, alpha=noise_scale / 2)
                prev.copy_(step_noise[name])
        return state

    return Kernel(init, update)
