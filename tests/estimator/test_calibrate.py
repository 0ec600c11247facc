"""calibrate(): a small ε × γ sweep on a regular model returns a table and a healthy recommendation."""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from estimator import LLCConfig, calibrate


def test_sweep_table_and_recommendation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 3, generator=gen)
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        y = model(x)
    rows_seen = []
    result = calibrate(
        model,
        (x, y),
        loss="mse",
        epsilons=[1e-5, 1e-4, 1e-2],
        gammas=[1.0, 100.0],
        base=LLCConfig(seed=0, batch_size=200),
        num_burnin_steps=300,
        num_draws=300,
        num_chains=2,
        on_row=rows_seen.append,
    )
    assert len(result.table) == 6 and rows_seen == result.table
    # ε = 1e-2 is beyond the stability limit 4 / (nβ h + γ) ≈ 7e-3: it diverges and is flagged.
    worst = [row for row in result.table if row["epsilon"] == 1e-2]
    assert all(not row["healthy"] for row in worst)
    rec = result.recommended
    assert rec is not None and rec["epsilon"] in (1e-5, 1e-4) and rec["gamma"] in (1.0, 100.0)
    # The regular model's λ = d/2 = 1.5 (γ ≪ nβ h, so the finite-temperature value is within 1 %).
    assert math.isclose(rec["llc_mean"], 1.5, rel_tol=0.25)
    config = result.recommended_config(LLCConfig(seed=3))
    assert config.epsilon == rec["epsilon"] and config.seed == 3
    json.dumps(result.to_dict(), allow_nan=False)
    assert "Recommended" in result.to_markdown()
