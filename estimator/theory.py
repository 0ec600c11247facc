"""Exact learning coefficients (real log canonical thresholds) for validating the estimator.

Every function returns ``(lambda, multiplicity)`` with ``lambda`` an exact :class:`fractions.Fraction`
and ``multiplicity`` a positive ``int``. The formulas follow ``shared/reference/llc-theory.md``
section 3; the original sources are cited on each function.

- :func:`regular_lambda` -- regular (non-degenerate) models, ``d / 2``.
- :func:`normal_crossing` -- ``K(w) = prod_i w_i^(2 k_i)`` with prior ``prod_i |w_i|^(h_i)``.
- :func:`rrr_lambda` -- reduced rank regression ``y = B A x`` (Aoyagi & Watanabe 2005).
- :func:`dln_lambda` -- deep linear networks ``y = W_L ... W_1 x`` (Aoyagi 2024, Theorem 1).

The RRR and DLN values are *global* RLCTs (over all parameters realising the true map). They equal the
local value at the origin when ``r = 0`` and, by a plausibility argument backed by numerics, at minimal
factorisations when ``r > 0``; elsewhere the local value can be higher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from numbers import Rational

__all__ = [
    "regular_lambda",
    "normal_crossing",
    "rrr_lambda",
    "dln_lambda",
    "quadratic_expected_llc",
]


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int, or raise ValueError naming the argument and the problem."""
    # bool is an int subclass; True as a width is almost certainly a bug in the caller.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def regular_lambda(d: int) -> tuple[Fraction, int]:
    """Learning coefficient of a regular model with ``d`` parameters: ``(d/2, 1)``.

    Source: Watanabe, *Algebraic Geometry and Statistical Learning Theory* (2009); for a model whose
    Fisher information at the true parameter is non-degenerate, the RLCT is half the dimension.
    """
    d = _check_int("d (number of parameters)", d, 0)
    return Fraction(d, 2), 1


def normal_crossing(k: Sequence[int], h: Sequence[int | Fraction] | None = None) -> tuple[Fraction, int]:
    """RLCT of the normal crossing ``K(w) = prod_i w_i^(2 k_i)`` with prior density ``∝ prod_i |w_i|^(h_i)``.

    ``lambda = min_i (h_i + 1) / (2 k_i)`` over coordinates with ``k_i > 0`` (a coordinate absent from
    ``K`` imposes nothing); the multiplicity is the number of coordinates attaining the minimum.
    ``h`` defaults to all zeros (a prior with positive, smooth density at the origin).

    Source: S. Watanabe, *Algebraic Geometry and Statistical Learning Theory* (2009), the normal
    crossing case of the RLCT; Lau et al., arXiv 2308.12108,
    where the model ``f(x; w) = x * prod_i w_i^(k_i)`` with pure-noise targets realises this ``K``.
    """
    k = list(k)
    if not k:
        raise ValueError("k must contain at least one exponent")
    ks = [_check_int(f"k[{i}]", k_i, 0) for i, k_i in enumerate(k)]
    if all(k_i == 0 for k_i in ks):
        raise ValueError("at least one exponent k_i must be positive: with all k_i = 0, K is constant")

    if h is None:
        hs = [Fraction(0)] * len(ks)
    else:
        h = list(h)
        if len(h) != len(ks):
            raise ValueError(f"h has {len(h)} entries but k has {len(ks)}; they must have the same length")
        hs = []
        for i, h_i in enumerate(h):
            # Exact arithmetic only: a float exponent would make the "exact" answer inexact.
            if isinstance(h_i, bool) or not isinstance(h_i, Rational):
                raise ValueError(f"h[{i}] must be an int or Fraction, got {h_i!r} ({type(h_i).__name__})")
            if h_i <= -1:
                raise ValueError(f"h[{i}] must be > -1 for the prior |w|^h to be integrable, got {h_i}")
            hs.append(Fraction(h_i))

    candidates = [(h_i + 1) / (2 * k_i) for k_i, h_i in zip(ks, hs, strict=True) if k_i > 0]
    lam = min(candidates)
    return lam, candidates.count(lam)


def rrr_lambda(M: int, H: int, N: int, r: int) -> tuple[Fraction, int]:
    """RLCT of reduced rank regression ``y = B A x`` (A: H x M, B: N x H) at a true map of rank ``r``.

    ``M`` is the input dimension, ``H`` the hidden (inner) dimension, ``N`` the output dimension and
    ``0 <= r <= min(M, H, N)`` the rank of the true product. The four cases are exhaustive and
    mutually exclusive:

    1. ``N+r <= M+H``, ``M+r <= N+H``, ``H+r <= M+N``:
       ``lambda = (2(H+r)(M+N) - (M-N)^2 - (H+r)^2) / 8`` if ``M+H+N+r`` is even (multiplicity 1);
       add 1 to the numerator if it is odd (multiplicity 2).
    2. ``M+H < N+r``: ``lambda = (HM - Hr + Nr) / 2``.
    3. ``N+H < M+r``: ``lambda = (HN - Hr + Mr) / 2``.
    4. ``M+N < H+r``: ``lambda = MN / 2``.

    Source: M. Aoyagi and S. Watanabe, "Stochastic complexities of reduced rank regression in Bayesian
    estimation", Neural Networks 18(7):924-933, 2005, Theorem 1.
    """
    M = _check_int("M (input dimension)", M, 1)
    H = _check_int("H (hidden dimension)", H, 1)
    N = _check_int("N (output dimension)", N, 1)
    r = _check_int("r (true rank)", r, 0)
    if r > min(M, H, N):
        raise ValueError(
            f"true rank r={r} exceeds min(M, H, N)={min(M, H, N)}: a product through {H} hidden units "
            f"from {M} inputs to {N} outputs has rank at most that"
        )

    if M + H < N + r:
        return Fraction(H * M - H * r + N * r, 2), 1
    if N + H < M + r:
        return Fraction(H * N - H * r + M * r, 2), 1
    if M + N < H + r:
        return Fraction(M * N, 2), 1
    numerator = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    if (M + H + N + r) % 2 == 0:
        return Fraction(numerator, 8), 1
    return Fraction(numerator + 1, 8), 2


def dln_lambda(widths: Sequence[int], r: int) -> tuple[Fraction, int]:
    """RLCT of a deep linear network ``f(x) = W_L ... W_1 x`` whose true product has rank ``r``.

    ``widths = (H_1, ..., H_{L+1})`` lists the layer widths from input to output (``L >= 1`` layers,
    so at least two widths); ``0 <= r <= min(widths)``. Following Aoyagi 2024, Theorem 1:

    1. ``M_s = H_s - r``.
    2. Sort the ``M_s`` ascending; for ``k = 2, ..., L+1`` take the first ``k`` (``l = k - 1``), with sum
       ``S`` and maximum ``mx``; ``mn_out`` is the smallest value not taken. Accept the first prefix with
       ``mx < mn_out``, ``S >= l * mx`` and ``S < l * mn_out`` (conditions on ``mn_out`` hold vacuously
       when everything is taken).
    3. ``Mbar = ceil(S / l)``, ``a = S - (Mbar - 1) * l``.
    4. ``lambda = (-r^2 + r(H_1 + H_{L+1}))/2 + a(l-a)/(4l) - (l(l-1)/4)(S/l)^2 + 1/2 sum_{i<j} M_i M_j``
       (the sum over pairs in the accepted prefix), multiplicity ``a(l - a) + 1``.

    The value is symmetric under reversing ``widths`` and for two layers equals :func:`rrr_lambda`.

    Source: M. Aoyagi, "Consideration on the learning efficiency of multiple-layered neural networks
    with linear units", Neural Networks 172:106132, 2024, Theorem 1.
    """
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(
            f"widths must list at least two sizes (input and output of one layer), got {len(widths)}"
        )
    widths = [_check_int(f"widths[{i}]", w, 1) for i, w in enumerate(widths)]
    r = _check_int("r (true rank)", r, 0)
    if r > min(widths):
        raise ValueError(
            f"true rank r={r} exceeds the narrowest width {min(widths)}: the product of the layers "
            f"cannot have rank above its narrowest layer"
        )

    reduced = sorted(w - r for w in widths)
    prefix = None
    for k in range(2, len(reduced) + 1):
        taken, rest = reduced[:k], reduced[k:]
        l = k - 1  # noqa: E741 -- the paper's name for the number of layers in the prefix
        S = sum(taken)
        mx = max(taken)
        mn_out = rest[0] if rest else None
        if mn_out is not None and not (mx < mn_out):
            continue  # would split a group of equal values
        if S < l * mx:
            continue
        if mn_out is not None and not (S < l * mn_out):
            continue
        prefix = (taken, l, S)
        break
    if prefix is None:  # Aoyagi's theorem guarantees a prefix exists; reaching here means a bug.
        raise AssertionError(f"no admissible prefix found for widths={widths}, r={r}")

    taken, l, S = prefix  # noqa: E741
    Mbar = -(-S // l)  # ceil(S / l) in exact integer arithmetic
    a = S - (Mbar - 1) * l
    pair_sum = (S * S - sum(m * m for m in taken)) // 2  # sum_{i<j} M_i M_j
    lam = (
        Fraction(-r * r + r * (widths[0] + widths[-1]), 2)
        + Fraction(a * (l - a), 4 * l)
        - Fraction(l * (l - 1), 4) * Fraction(S, l) ** 2
        + Fraction(pair_sum, 2)
    )
    return lam, a * (l - a) + 1


def quadratic_expected_llc(hessian_eigenvalues: Sequence[float], nbeta: float, gamma: float) -> float:
    """Exact expected estimate for a quadratic loss at finite temperature (continuous-time sampler).

    ``E[n*beta*(L - L(w*))] = 1/2 * sum_i n*beta*h_i / (n*beta*h_i + gamma)`` for Hessian eigenvalues
    ``h_i >= 0`` of ``L_n`` at its minimiser ``w*`` and a localizer of strength ``gamma`` centred there.
    As ``gamma -> 0`` this tends to ``(number of positive h_i) / 2``. Discretisation by SGLD with step
    ``epsilon`` inflates each term by ``1 / (1 - epsilon * a_i / 4)``, ``a_i = n*beta*h_i + gamma``
    (not included here). Source: llc-theory.md section 3 (Gaussian integral).
    """
    if not math.isfinite(nbeta) or nbeta <= 0:
        raise ValueError(f"nbeta must be a positive finite number, got {nbeta}")
    if not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a non-negative finite number, got {gamma}")
    total = 0.0
    for i, h in enumerate(hessian_eigenvalues):
        if not math.isfinite(h) or h < 0:
            raise ValueError(f"hessian_eigenvalues[{i}] must be finite and >= 0 (w* a minimiser), got {h}")
        if h == 0 and gamma == 0:
            raise ValueError(
                "a zero Hessian eigenvalue with gamma = 0 gives an improper posterior; use gamma > 0"
            )
        total += nbeta * h / (nbeta * h + gamma)
    return total / 2
