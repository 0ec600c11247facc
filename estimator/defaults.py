"""The rules that fill in ``None`` fields of LLCConfig (documented in docs/estimator.md)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .llc import _Run

# Samples of the fixed batch on which Hessian-vector products (curvature) are computed.
CURVATURE_SAMPLES = 2048
# Power-iteration steps per curvature check during warm-up (warm-started from the previous vector).
WARMUP_POWER_ITERS = 8
# First warm-up step at which the curvature at the chains is measured; then at 2x, 4x, ...
FIRST_CURVATURE_CHECK = 8
# Steps between divergence checks / progress reports (one host sync each).
CHECK_EVERY = 32
MAX_BURNIN_RESTARTS = 4
RESTART_SHRINK = 10.0


def nbeta(n: int) -> float:
    """n / log n (the paper's β = 1 / log n)."""
    return n / math.log(n)


def gamma(n: int, nbeta_value: float) -> float:
    return 1.0


def batch_size(n: int) -> int:
    return min(n, 512)


def chunk_size(run: _Run) -> int:
    """All chains in one vmap call unless the per-chain buffers get big (then bound them to ~1 GiB)."""
    bytes_per_chain = 3 * run.P * (8 if run.dtype.itemsize == 8 else 4)
    return max(1, min(run.C, (1 << 30) // max(1, bytes_per_chain)))


def burnin_steps(run: _Run) -> int:
    return 2000


def num_draws(run: _Run) -> int:
    return 2000


def mala_every(sampling_steps: int, sampler: str) -> int | None:
    """Measure the MALA acceptance on ~1-2 % of sampling steps (at least 4 of them), not for SGNHT."""
    if sampler == "sgnht" or sampling_steps < 4:
        return None
    return max(50, sampling_steps // 64) if sampling_steps >= 200 else max(1, sampling_steps // 4)


def explosion_margin(num_params: int) -> float:
    """nβ (L - L_n(w*)) above this is an explosion (λ̂ is at most ~d/2 for a sane chain)."""
    return 50.0 * num_params + 1e4
