"""Models with a known learning coefficient, for validating the estimator (bench/validate.py, tests).

Every case is a noise-free teacher problem with the MSE loss, so w* is an exact minimiser of L_n and
the loss near w* is the population K(w) up to sampling of the inputs:

- ``linear``: regular linear regression, λ = d/2.
- ``normal_crossing``: ``f(x; w) = x · prod_i w_i^k_i`` at w* = 0 with zero targets, so
  ``L(w) = mean(x²) · prod_i w_i^(2 k_i)``: λ = min_i 1/(2 k_i) (Gaussian localizer = flat prior).
- ``line_dot``: ``f(x; w) = x · (w1 - 1)(w1² + w2²)²`` with zero targets, so
  ``L ∝ (w1 - 1)² (w1² + w2²)⁴``: λ = 1/4 at the origin, 1/2 on the line w1 = 1.
- ``dln``: deep linear network ``W_L ... W_1 x`` (no biases). With r = 0 at the origin (all weights
  zero, targets zero); with r > 0 at a minimal factorisation (each layer rank r: an invertible r×r
  block in the top-left corner, zeros elsewhere), targets the teacher's outputs. Aoyagi's λ.
  Two-layer networks are reduced rank regression (the RRR formula gives the same value).

The theory values come from ``estimator.theory``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

from . import theory


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # "regular", "normal_crossing", "rrr", "dln_r0", "dln_r>0", "line_dot"
    llc: Fraction
    multiplicity: int
    n: int
    build: Callable[[int], tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]]  # seed -> (model, data)
    loss: str = "mse"
    note: str = ""
    k: tuple[int, ...] | None = None  # normal crossing exponents (for the exact finite-n value)


class Polynomial(nn.Module):
    """``f(x; w) = x · g(w)`` for a scalar polynomial g of the parameters (one output)."""

    def __init__(self, w0: Sequence[float], g: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(list(w0), dtype=torch.float32))
        self.g = g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.g(self.w)


def _monomial(k: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    powers = list(k)

    def g(w: torch.Tensor) -> torch.Tensor:
        out = w[0] ** powers[0]
        for i in range(1, len(powers)):
            out = out * w[i] ** powers[i]
        return out

    return g


def _line_dot(w: torch.Tensor) -> torch.Tensor:
    return (w[0] - 1) * (w[0] ** 2 + w[1] ** 2) ** 2


def _inputs(n: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen)


def linear_case(d_in: int, d_out: int, n: int) -> Case:
    def build(seed: int):
        x = _inputs(n, d_in, seed)
        gen = torch.Generator().manual_seed(10_000 + seed)
        model = nn.Linear(d_in, d_out, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.randn(d_out, d_in, generator=gen))
            y = model(x)
        return model, (x, y)

    lam, mult = theory.regular_lambda(d_in * d_out)
    return Case(f"linear {d_in}->{d_out}", "regular", lam, mult, n, build)


def normal_crossing_case(k: Sequence[int], n: int) -> Case:
    def build(seed: int):
        x = _inputs(n, 1, seed)
        model = Polynomial([0.0] * len(k), _monomial(k))
        return model, (x, torch.zeros(n, 1))

    lam, mult = theory.normal_crossing(list(k))
    label = " ".join(f"w{i + 1}^{2 * ki}" for i, ki in enumerate(k)) if len(k) > 1 else f"w^{2 * k[0]}"
    return Case(f"normal crossing {label}", "normal_crossing", lam, mult, n, build, k=tuple(k))


def line_dot_case(point: tuple[float, float], n: int) -> Case:
    def build(seed: int):
        x = _inputs(n, 1, seed)
        model = Polynomial(list(point), _line_dot)
        return model, (x, torch.zeros(n, 1))

    on_line = abs(point[0] - 1.0) < 1e-12
    lam = Fraction(1, 2) if on_line else Fraction(1, 4)
    where = "line" if on_line else "dot"
    return Case(f"line+dot at {point} ({where})", "line_dot", lam, 1, n, build)


def dln_case(widths: Sequence[int], r: int, n: int) -> Case:
    widths = list(widths)

    def build(seed: int):
        x = _inputs(n, widths[0], seed)
        gen = torch.Generator().manual_seed(20_000 + seed)
        layers = [nn.Linear(widths[i], widths[i + 1], bias=False) for i in range(len(widths) - 1)]
        with torch.no_grad():
            for layer in layers:
                layer.weight.zero_()
                if r > 0:
                    layer.weight[:r, :r].copy_(_well_conditioned(r, gen))
        model = nn.Sequential(*layers)
        with torch.no_grad():
            y = model(x)
        return model, (x, y)

    lam, mult = theory.dln_lambda(widths, r)
    family = ("rrr" if len(widths) == 3 else "dln_r0") if r == 0 else "dln_r>0"
    label = "RRR" if len(widths) == 3 else "DLN"
    return Case(f"{label} {tuple(widths)} r={r}", family, lam, mult, n, build)


def _well_conditioned(r: int, gen: torch.Generator) -> torch.Tensor:
    """An r×r matrix with singular values in [0.7, 1.3] (a random rotation times a diagonal)."""
    q, _ = torch.linalg.qr(torch.randn(r, r, generator=gen))
    s = 0.7 + 0.6 * torch.rand(r, generator=gen)
    return q * s


LINE_DOT_N = 20_000


def battery(n: int = 20_000) -> list[Case]:
    """The validation battery of bench/validate.py: multiplicity-1 cases (the n -> ∞ value applies
    at this n up to the finite-n gaps listed in docs/validation.md)."""
    return [
        linear_case(8, 1, n),
        linear_case(10, 3, n),
        normal_crossing_case((2,), n),
        normal_crossing_case((3,), n),
        normal_crossing_case((1, 2), n),
        dln_case((3, 4, 5), 0, n),
        dln_case((6, 4, 6), 0, n),
        dln_case((3, 3, 3, 3), 0, n),
        dln_case((10, 5, 5, 10), 0, n),
        dln_case((5, 4, 3, 6), 0, n),
        dln_case((3, 3, 3), 1, n),
        dln_case((5, 4, 5), 2, n),
        dln_case((4, 4, 4, 4), 1, n),
        dln_case((6, 4, 4, 6), 2, n),
    ]


def quick_battery(n: int = 20_000) -> list[Case]:
    """A fast subset (one case per family)."""
    return [
        linear_case(8, 1, n),
        normal_crossing_case((2,), n),
        dln_case((3, 4, 5), 0, n),
        dln_case((3, 3, 3), 1, n),
    ]


def line_dot_cases(n: int = LINE_DOT_N) -> tuple[Case, Case]:
    return line_dot_case((0.0, 0.0), n), line_dot_case((1.0, 0.3), n)


def relative_error(estimate: float, truth: Fraction) -> float:
    return (estimate - float(truth)) / float(truth) if truth != 0 else math.nan
