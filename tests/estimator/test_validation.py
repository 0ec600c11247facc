"""A fast subset of the validation battery (bench/validate.py): defaults only, against exact λ.

Tolerances are the issue's family targets (regular/RRR/DLN r = 0: 10 %; r > 0: 20 %), tighter where
the full battery shows much smaller errors; every case is a multiplicity-1 case whose exact
posterior at this n is within a few % of λ (docs/validation.md lists the gaps).
"""

from __future__ import annotations

import pytest

from estimator import LLCConfig, estimate_llc
from estimator import validation_cases as vc

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _estimate(case: vc.Case, seed: int = 0) -> float:
    model, data = case.build(seed)
    result = estimate_llc(model, data, loss=case.loss, config=LLCConfig(seed=seed))
    assert not result.diagnostics["diverged_chains"]
    return result.llc_mean


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "tolerance"),
    [
        (vc.linear_case(8, 1, 20_000), 0.05),
        (vc.dln_case((3, 4, 5), 0, 20_000), 0.10),
        (vc.dln_case((3, 3, 3), 1, 20_000), 0.15),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_default_estimate_matches_theory(case: vc.Case, tolerance: float):
    estimate = _estimate(case)
    assert abs(vc.relative_error(estimate, case.llc)) <= tolerance, (case.name, estimate, float(case.llc))


@pytest.mark.slow
def test_line_dot_ordering():
    dot, line = vc.line_dot_cases()
    at_dot, on_line = _estimate(dot, seed=1), _estimate(line, seed=1)
    assert at_dot < on_line
    assert 0.15 < at_dot < 0.35 and 0.4 < on_line < 0.6
