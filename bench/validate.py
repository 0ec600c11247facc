"""Validation battery: λ̂ with default settings against exact learning coefficients.

    .venv/bin/python bench/validate.py                 # full battery, writes docs/validation.md
    .venv/bin/python bench/validate.py --quick         # a few cases, no file written
    .venv/bin/python bench/validate.py --line-dot-seeds 20   # more seeds for the ordering test

Every case runs ``estimate_llc(model, data, loss="mse", config=LLCConfig(seed=seed))``: defaults
only, no per-case tuning. The cases are noise-free teacher problems (estimator/validation_cases.py)
with exact λ from estimator/theory.py. For the low-dimensional normal-crossing cases the table also
gives the exact posterior expectation at the run's nβ and γ (numerical quadrature), which separates
the sampler's error from the finite-n gap between the posterior and its n -> ∞ limit λ.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimator import LLCConfig, estimate_llc  # noqa: E402
from estimator import validation_cases as vc  # noqa: E402

TARGETS = {
    "regular": 0.10,
    "rrr": 0.10,
    "dln_r0": 0.10,
    "dln_r>0": 0.20,
}


@dataclass
class Row:
    case: vc.Case
    estimate: float
    std: float
    sem: float
    seconds: float
    rel_error: float
    posterior: float | None  # exact finite-n posterior value where computable
    warnings: list[str]
    steps: int

    @property
    def within_target(self) -> bool | None:
        tol = TARGETS.get(self.case.family)
        return None if tol is None else abs(self.rel_error) <= tol


def exact_posterior_normal_crossing(
    k: tuple[int, ...], nbeta: float, gamma: float, scale: float
) -> float | None:
    """E[nβ K] under exp(-nβ K - γ/2 |w|²) for K = scale · prod w_i^(2k_i), by quadrature (1 or 2 dims)."""
    if len(k) > 2:
        return None
    # Log-spaced grid on the positive orthant (the integrand is even in every coordinate).
    u = np.linspace(-14.0, math.log(10.0 / math.sqrt(gamma)), 6001 if len(k) == 1 else 3001)
    w = np.exp(u)
    dw = w * (u[1] - u[0])
    if len(k) == 1:
        K = scale * w ** (2 * k[0])
        p = np.exp(-nbeta * K - gamma * w**2 / 2) * dw
    else:
        W1, W2 = np.meshgrid(w, w, indexing="ij")
        K = scale * W1 ** (2 * k[0]) * W2 ** (2 * k[1])
        p = np.exp(-nbeta * K - gamma * (W1**2 + W2**2) / 2) * np.outer(dw, dw)
    return float((p * nbeta * K).sum() / p.sum())


def run_case(case: vc.Case, seed: int, dtype: str = "float32") -> Row:
    model, data = case.build(seed)
    started = time.perf_counter()
    result = estimate_llc(model, data, loss=case.loss, config=LLCConfig(seed=seed, dtype=dtype))
    seconds = time.perf_counter() - started
    posterior = None
    if case.family == "normal_crossing" and case.k is not None:
        scale = float((data[0] ** 2).mean())  # L(w) = mean(x²) · prod w^(2k)
        posterior = exact_posterior_normal_crossing(case.k, result.nbeta, result.gamma, scale)
    return Row(
        case=case,
        estimate=result.llc_mean,
        std=result.llc_std,
        sem=result.llc_sem,
        seconds=seconds,
        rel_error=vc.relative_error(result.llc_mean, case.llc),
        posterior=posterior,
        warnings=[w["code"] for w in result.warnings],
        steps=int(
            result.config.num_burnin_steps + result.config.num_draws * result.config.num_steps_bw_draws
        ),
    )


def line_dot(seeds: int, n: int, dtype: str = "float32") -> tuple[int, list[tuple[float, float]], float]:
    dot, line = vc.line_dot_cases(n)
    started = time.perf_counter()
    pairs = []
    for seed in range(seeds):
        values = []
        for case in (dot, line):
            model, data = case.build(seed)
            values.append(estimate_llc(model, data, loss="mse", config=LLCConfig(seed=seed, dtype=dtype)).llc_mean)
        pairs.append((values[0], values[1]))
    right = sum(1 for at_dot, on_line in pairs if at_dot < on_line)
    return right, pairs, time.perf_counter() - started


def format_table(rows: list[Row]) -> str:
    lines = [
        "| case | n | true λ | λ̂ mean ± std (chains) | rel. error | exact posterior at this nβ, γ | target | time (s) | steps/chain | warnings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        tol = TARGETS.get(row.case.family)
        target = f"±{tol:.0%}" if tol is not None else "median"
        mark = "" if row.within_target is None else (" ✓" if row.within_target else " ✗")
        posterior = f"{row.posterior:.4g}" if row.posterior is not None else "–"
        lines.append(
            f"| {row.case.name} | {row.case.n} | {float(row.case.llc):.4g} | {row.estimate:.4g} ± {row.std:.2g} | "
            f"{row.rel_error:+.1%}{mark} | {posterior} | {target} | {row.seconds:.0f} | {row.steps} | "
            f"{', '.join(row.warnings) or '–'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few fast cases; no docs written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--line-dot-seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small models run best on 1)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "validation.md")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="LLCConfig.dtype of every run (bfloat16: float32 chains, bfloat16 autocast)")
    parser.add_argument("--cases", default=None,
                        help="semicolon-separated case names to run (names hold commas) (default: the whole battery or --quick's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cases = vc.quick_battery() if args.quick else vc.battery()
    if args.cases:
        wanted = args.cases.split(";")
        cases = [c for c in vc.battery() + vc.quick_battery() if c.name in wanted]
        cases = list({c.name: c for c in cases}.values())
    rows = []
    started = time.perf_counter()
    for case in cases:
        row = run_case(case, args.seed, args.dtype)
        rows.append(row)
        print(
            f"{case.name:34s} λ={float(case.llc):8.4g}  λ̂={row.estimate:9.4g} ± {row.std:7.2g}  "
            f"err {row.rel_error:+7.1%}  {row.seconds:5.0f}s  {','.join(row.warnings)}",
            flush=True,
        )
    seeds = 3 if args.quick and not args.cases else args.line_dot_seeds
    right, pairs, ld_seconds = line_dot(seeds, vc.LINE_DOT_N, args.dtype)
    total = time.perf_counter() - started

    errors = [abs(r.rel_error) for r in rows]
    median = statistics.median(errors)
    failures = [r for r in rows if r.within_target is False]
    table = format_table(rows)
    summary = (
        f"- median |relative error|: **{median:.1%}** (target ≤ 5 %)\n"
        f"- cases outside their family's target: **{len(failures)}** "
        f"({', '.join(r.case.name for r in failures) or 'none'})\n"
    )
    ordering = right / len(pairs) if pairs else 1.0  # --line-dot-seeds 0: the cases only
    if pairs:
        dots = [d for d, _ in pairs]
        lines_ = [v for _, v in pairs]
        summary += (
            f"- line+dot ordering (λ̂ at the origin < λ̂ on the line): **{right}/{len(pairs)} seeds = {ordering:.0%}** "
            f"(target ≥ 95 %); λ̂ at the dot {statistics.mean(dots):.3f} ± {statistics.pstdev(dots):.3f}, "
            f"on the line {statistics.mean(lines_):.3f} ± {statistics.pstdev(lines_):.3f} (mean ± sd over seeds), "
            f"{ld_seconds:.0f} s\n"
        )
    summary += (
        f"- total time: {total / 60:.1f} min on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    )
    print()
    print(table)
    print()
    print(summary)
    if not args.quick and not args.cases and args.dtype == "float32":
        args.output.write_text(render_doc(table, summary, args) + _bfloat16_section(args.output))
        print(f"\nwrote {args.output}")
    ok = median <= 0.05 and not failures and ordering >= 0.95
    return 0 if ok else 1


def _bfloat16_section(path: Path) -> str:
    """The hand-measured "## bfloat16" section of the existing document, kept when it is rewritten."""
    if not path.exists():
        return ""
    text = path.read_text()
    start = text.find("\n## bfloat16")
    return "" if start < 0 else text[start:]


def render_doc(table: str, summary: str, args) -> str:
    return f"""# Validation: λ̂ against exact learning coefficients

Generated by `bench/validate.py` (command below). Every estimate uses **defaults only**:
`estimate_llc(model, data, loss="mse", config=LLCConfig(seed={args.seed}))` — no per-case tuning.

```bash
.venv/bin/python bench/validate.py            # or: make validate
```

## Cases

Noise-free teacher problems with the MSE loss (`estimator/validation_cases.py`), exact λ from
`estimator/theory.py` (Aoyagi's formula for deep linear networks, Aoyagi–Watanabe for reduced rank
regression, d/2 for regular models, min 1/(2k_i) for normal crossings). All chosen with multiplicity 1
so that the n -> ∞ value applies at the stated n (multiplicity > 1 converges like 1/log n). The
finite-n gap is visible where the exact posterior expectation can be computed (the normal crossings):
that column is what a perfect sampler would return at this nβ and γ.

- regular: linear regression (no bias), inputs N(0, I), λ = d/2;
- normal crossing: f(x; w) = x · prod w_i^k_i at w* = 0, zero targets (so L = mean(x²) prod w_i^(2k_i));
- reduced rank regression (two-layer linear networks) and deep linear networks at the origin (r = 0);
- deep linear networks / RRR at a minimal factorisation (r > 0: each layer has rank exactly r, unused
  units have zero in- and out-weights; the local λ there is Aoyagi's value by a plausibility argument
  plus numerics, so these rows have the looser 20 % target);
- line + dot: K = (w1 - 1)² (w1² + w2²)⁴, λ = 1/4 at the origin and 1/2 on the line (at (1, 0.3)); the
  test is the ordering across seeds.

## Results

{table}

{summary}

Targets (issue 2): median |relative error| ≤ 5 %; every regular / RRR / DLN r = 0 case within 10 %;
r > 0 cases within 20 %; line+dot ordering right in ≥ 95 % of seeds.

## How much of the error is the sampler?

For the linear-network rows, the exact expectation under the same localized posterior (γ = 1,
nβ = n / log n) is measured by full-batch MALA with `bench/exact_posterior.py` (e.g.
`.venv/bin/python bench/exact_posterior.py 3,3,3,3 0`); the values are in docs/estimator.md
("Choices, and what they measured"). At n = 20,000 the posterior itself sits 1–8 % below λ for these
cases (−8.4 % for (3,3,3,3), −5.4 % for (5,4,3,6), −5.1 % for (4,4,4,4) r = 1, −1.4 % to −3.3 % for
the others): most of the negative errors above are that finite-n gap, not sampling error. It shrinks
slowly with n and with a weaker localizer (smaller γ), at a proportional cost in mixing time.
"""


if __name__ == "__main__":
    raise SystemExit(main())
