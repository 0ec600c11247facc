"""Exact learning coefficients in estimator.theory against the worked values of llc-theory.md section 3."""

import itertools
import random
from fractions import Fraction

import pytest

from estimator.theory import (
    dln_lambda,
    normal_crossing,
    quadratic_expected_llc,
    regular_lambda,
    rrr_lambda,
)

# (widths input -> output, true rank) -> (lambda, multiplicity); values from llc-theory.md section 3.
# Multiplicities other than the one stated in the reference follow from a(l - a) + 1 and, for two
# layers, from the parity rule of the reduced rank regression formula.
WORKED_DLN = [
    ((2, 2, 2), 0, Fraction(3, 2)),
    ((3, 3, 3, 3), 0, Fraction(3)),
    ((10, 5, 5, 10), 0, Fraction(25, 2)),
    ((5, 3, 5), 0, Fraction(13, 2)),
    ((3, 3, 3), 1, Fraction(4)),
    ((10, 5, 10), 2, Fraction(29)),
    ((8, 6, 10, 4, 7), 2, Fraction(17)),
    ((100,) * 11, 0, Fraction(2750)),
    ((455, 395, 125, 350, 277, 261, 297), 28, Fraction(41093, 2)),
]


@pytest.mark.parametrize(("widths", "r", "expected"), WORKED_DLN)
def test_dln_worked_values(widths, r, expected):
    lam, mult = dln_lambda(widths, r)
    assert isinstance(lam, Fraction)
    assert lam == expected
    assert isinstance(mult, int) and mult >= 1


def test_dln_large_case_has_multiplicity_three():
    assert dln_lambda((455, 395, 125, 350, 277, 261, 297), 28) == (Fraction(41093, 2), 3)


def test_two_layer_worked_values_match_rrr_parity_rule():
    # (5,3,5),0: M+H+N+r = 13 is odd -> numerator + 1, multiplicity 2.
    assert rrr_lambda(5, 3, 5, 0) == (Fraction(13, 2), 2)
    # (2,2,2),0: sum 6 is even -> multiplicity 1.
    assert rrr_lambda(2, 2, 2, 0) == (Fraction(3, 2), 1)
    assert rrr_lambda(3, 3, 3, 1) == (Fraction(4), 1)
    assert rrr_lambda(10, 5, 10, 2) == (Fraction(29), 2)


def test_dln_reversal_symmetry_random_widths():
    rng = random.Random(20240601)
    for _ in range(400):
        depth = rng.randint(2, 7)
        widths = [rng.randint(1, 30) for _ in range(depth)]
        r = rng.randint(0, min(widths))
        assert dln_lambda(widths, r) == dln_lambda(widths[::-1], r), (widths, r)


def _rrr_case(M, H, N, r):
    """Which of the four Aoyagi-Watanabe cases applies (independent restatement of the conditions)."""
    if M + H < N + r:
        return "input-bottleneck"
    if N + H < M + r:
        return "output-bottleneck"
    if M + N < H + r:
        return "wide-hidden"
    return "main-even" if (M + H + N + r) % 2 == 0 else "main-odd"


def test_rrr_equals_two_layer_dln_exhaustively():
    cases_seen = {}
    for M, H, N in itertools.product(range(1, 10), repeat=3):
        for r in range(0, min(M, H, N) + 1):
            rrr = rrr_lambda(M, H, N, r)
            assert dln_lambda((M, H, N), r) == rrr, (M, H, N, r)
            case = _rrr_case(M, H, N, r)
            cases_seen[case] = cases_seen.get(case, 0) + 1
            # Multiplicity is 2 exactly in the odd main case.
            assert rrr[1] == (2 if case == "main-odd" else 1), (M, H, N, r)
    # The grid must exercise every branch of the formula, not just the main one.
    assert set(cases_seen) == {
        "input-bottleneck",
        "output-bottleneck",
        "wide-hidden",
        "main-even",
        "main-odd",
    }
    assert min(cases_seen.values()) >= 20


def test_rrr_non_main_cases_by_hand():
    # M+H < N+r: 1 input, 1 hidden, 5 outputs, rank 1 -> (1*1 - 1*1 + 5*1)/2 = 5/2
    assert rrr_lambda(1, 1, 5, 1) == (Fraction(5, 2), 1)
    # N+H < M+r mirrors it.
    assert rrr_lambda(5, 1, 1, 1) == (Fraction(5, 2), 1)
    # M+N < H+r: hidden layer wider than needed -> the map is regular in its M*N entries.
    assert rrr_lambda(2, 6, 2, 2) == (Fraction(2), 1)


def test_rrr_full_rank_square_is_regular_in_the_map():
    # H = M = N = r: the product is any invertible map, M*N free entries; lambda = M*N/2.
    for d in range(1, 8):
        assert rrr_lambda(d, d, d, d) == (Fraction(d * d, 2), 1)


def test_single_layer_dln_is_regular():
    for m, n in itertools.product(range(1, 7), repeat=2):
        for r in range(0, min(m, n) + 1):
            assert dln_lambda((m, n), r) == regular_lambda(m * n)


def test_dln_never_exceeds_half_the_parameter_count():
    rng = random.Random(7)
    for _ in range(300):
        widths = [rng.randint(1, 12) for _ in range(rng.randint(2, 6))]
        r = rng.randint(0, min(widths))
        d = sum(a * b for a, b in itertools.pairwise(widths))
        lam, _ = dln_lambda(widths, r)
        assert 0 <= lam <= Fraction(d, 2), (widths, r, lam, d)


def test_regular_lambda():
    assert regular_lambda(0) == (Fraction(0), 1)
    assert regular_lambda(7) == (Fraction(7, 2), 1)
    assert regular_lambda(85_002) == (Fraction(42_501), 1)


def test_normal_crossing():
    assert normal_crossing([1]) == (Fraction(1, 2), 1)
    assert normal_crossing([1, 1]) == (Fraction(1, 2), 2)  # w1*w2: multiplicity 2
    assert normal_crossing([1, 2]) == (Fraction(1, 4), 1)
    assert normal_crossing([2, 4, 4]) == (Fraction(1, 8), 2)
    # Prior exponents shift the numerator; a zero exponent drops the coordinate from K.
    assert normal_crossing([1, 2], h=[0, 1]) == (Fraction(1, 2), 2)
    assert normal_crossing([1, 2], h=[0, 3]) == (Fraction(1, 2), 1)
    assert normal_crossing([0, 3], h=[0, 1]) == (Fraction(1, 3), 1)
    assert normal_crossing([2], h=[Fraction(1, 2)]) == (Fraction(3, 8), 1)


def test_quadratic_expected_llc():
    # With gamma = 0 each positive direction contributes exactly 1/2.
    assert quadratic_expected_llc([1.0, 2.0, 3.0], nbeta=100.0, gamma=0.0) == pytest.approx(1.5)
    # nbeta*h = gamma halves that direction's contribution; flat directions contribute nothing.
    assert quadratic_expected_llc([1.0, 0.0], nbeta=100.0, gamma=100.0) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dln_lambda((3, -1, 3), 0), "widths\\[1\\] must be >= 1"),
        (lambda: dln_lambda((3, 0, 3), 0), "widths\\[1\\] must be >= 1"),
        (lambda: dln_lambda((3, 2, 3), 3), "exceeds the narrowest width 2"),
        (lambda: dln_lambda((3, 2, 3), -1), "r \\(true rank\\) must be >= 0"),
        (lambda: dln_lambda((3,), 0), "at least two sizes"),
        (lambda: dln_lambda((3, 2.0, 3), 0), "must be an integer"),
        (lambda: dln_lambda((3, True, 3), 0), "must be an integer"),
        (lambda: rrr_lambda(3, 2, 3, 3), "exceeds min\\(M, H, N\\)=2"),
        (lambda: rrr_lambda(0, 2, 3, 0), "M \\(input dimension\\) must be >= 1"),
        (lambda: rrr_lambda(3, 2, 3, -2), "must be >= 0"),
        (lambda: regular_lambda(-1), "must be >= 0"),
        (lambda: normal_crossing([]), "at least one exponent"),
        (lambda: normal_crossing([0, 0]), "at least one exponent k_i must be positive"),
        (lambda: normal_crossing([1, -1]), "k\\[1\\] must be >= 0"),
        (lambda: normal_crossing([1, 1], h=[0]), "same length"),
        (lambda: normal_crossing([1], h=[-1]), "must be > -1"),
        (lambda: normal_crossing([1], h=[0.5]), "int or Fraction"),
        (lambda: quadratic_expected_llc([-1.0], 10.0, 1.0), "must be finite and >= 0"),
        (lambda: quadratic_expected_llc([0.0], 10.0, 0.0), "improper posterior"),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
