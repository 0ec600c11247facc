"""SG-MCMC kernels for the localized tempered posterior ``exp(-nβ L(w) - γ/2 ||w - w*||²)``.

One kernel per module, each ``build(gamma, nbeta, w_star, ...) -> Kernel(init, update, ...)`` in the
style of blackjax/posteriors; the protocol, the state's shape and the localized drift are in
``base.py``. The step size ε is an argument of ``init``/``update``, and the noise comes from the
caller (each chain's own generator).
"""

from __future__ import annotations

from ..config import SAMPLERS
from . import rmsprop_sgld, sgld, sgnht

KERNELS = {"sgld": sgld, "rmsprop_sgld": rmsprop_sgld, "sgnht": sgnht}
if tuple(KERNELS) != SAMPLERS:
    raise ImportError(f"estimator.config.SAMPLERS {SAMPLERS} and the kernel table {tuple(KERNELS)} disagree")

__all__ = ["KERNELS", "rmsprop_sgld", "sgld", "sgnht"]
