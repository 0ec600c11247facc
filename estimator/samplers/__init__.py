"""SG-MCMC kernels for the localized tempered posterior ``exp(-nβ L(w) - γ/2 ||w - w*||²)``.

One kernel per module, each ``build(...) -> (init, update)`` in the style of blackjax/posteriors:

- ``init(params, noise) -> state``: the sampler state for a tree (dict) of stacked per-chain
  parameters, leading dimension = chains.
- ``update(state, grads, noise) -> state``: one step, given the minibatch loss gradients
  ``∇L_B`` (same tree) and standard normal noise (same tree, drawn by the caller from each chain's
  own generator). The update is done in place on the state's tensors (no per-step allocation) and
  the same state is returned.

Randomness stays outside: a kernel is a deterministic function of its inputs, which is what makes
runs bit-identical whichever way chains are batched. Each kernel also exposes
``drift_scale(state)``: the per-coordinate multiplier of its step (None for plain SGLD), which the
driver uses for the MALA acceptance diagnostic and the curvature probes.
"""

from __future__ import annotations

from ..config import SAMPLERS
from . import rmsprop_sgld, sgld, sgnht

KERNELS = {"sgld": sgld, "rmsprop_sgld": rmsprop_sgld, "sgnht": sgnht}
if tuple(KERNELS) != SAMPLERS:
    raise ImportError(f"estimator.config.SAMPLERS {SAMPLERS} and the kernel table {tuple(KERNELS)} disagree")

__all__ = ["KERNELS", "rmsprop_sgld", "sgld", "sgnht"]
