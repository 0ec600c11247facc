"""Small trained models shared by the estimator tests."""

from __future__ import annotations

import torch
from torch import nn


def trained_classifier(seed: int = 0, n: int = 256, d: int = 6, classes: int = 3):
    """A tanh MLP classifier trained briefly with Adam on random labels: (model, x, y)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y
