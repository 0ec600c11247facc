"""Small models, data and a fast job config shared by the live client and CLI tests."""

from __future__ import annotations

import numpy as np

# Small enough that a job takes a few seconds on a shared 2-core CPU; epsilon and nbeta given so the
# worker skips the curvature search. The numbers are only checked for sanity here (the estimator's
# own tests check accuracy).
FAST_CONFIG = {
    "num_chains": 2,
    "num_draws": 40,
    "num_burnin_steps": 10,
    "num_steps_bw_draws": 1,
    "batch_size": 32,
    "epsilon": 1e-3,
    "gamma": 100.0,
    "seed": 7,
}
# A job that runs long enough to be cancelled or timed out while still running.
SLOW_CONFIG = {**FAST_CONFIG, "num_chains": 1, "num_draws": 100_000, "num_burnin_steps": 0}  # the server maximum

MLP_ARCHITECTURE = {"kind": "mlp", "in_features": 4, "hidden": [8], "out_features": 3, "activation": "relu"}


def classification_data(n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0).astype(np.int64)
    return {"x": x, "y": y}


def mlp(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
