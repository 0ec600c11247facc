"""``calibrate``: a sweep of short runs over ε × γ (× nβ) and a recommended setting.

The criteria (also in docs/estimator.md):

1. A setting is *healthy* when no chain diverged, the MALA acceptance of its proposals is inside
   ``mala_band``, split R-hat is below ``rhat_threshold`` and the loss trace is not still rising.
2. γ: the estimate should not depend on the localizer. Among γ values with at least one healthy
   setting, take each γ's estimate at its largest healthy ε and pick the γ whose estimate changes
   least relative to its neighbours in the sweep (a plateau); ties go to the smaller γ, which
   localizes less.
3. ε: at that γ, the largest healthy ε (the largest stable step: the fastest mixing whose
   diagnostics are clean). The reason says whether its estimate agrees with the next smaller
   healthy ε (within 5 % plus two standard errors), i.e. whether the sweep shows convergence in ε.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import LLCConfig
from .llc import estimate_llc
from .losses import LossFn
from .result import LLCResult, _jsonable


@dataclass
class CalibrationResult:
    table: list[dict[str, Any]]  # one row per (epsilon, gamma, nbeta)
    recommended: dict[str, Any] | None  # {"epsilon", "gamma", "nbeta", "llc_mean", ...} or None
    reason: str
    criteria: str = field(default=__doc__.split("The criteria (also in docs/estimator.md):", 1)[1].strip())

    def recommended_config(self, base: LLCConfig | None = None) -> LLCConfig:
        """``base`` (default LLCConfig()) with the recommended ε, γ and nβ."""
        if self.recommended is None:
            raise ValueError(f"no setting was recommended: {self.reason}")
        base = base or LLCConfig()
        return base.replace(
            epsilon=self.recommended["epsilon"],
            gamma=self.recommended["gamma"],
            nbeta=self.recommended["nbeta"],
        )

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({"table": self.table, "recommended": self.recommended, "reason": self.reason})

    def to_markdown(self) -> str:
        lines = [
            "| ε | γ | nβ | λ̂ ± sem | MALA acc. | R-hat | diverged | rising | healthy |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.table:
            lines.append(
                f"| {row['epsilon']:.3g} | {row['gamma']:.3g} | {row['nbeta']:.4g} | "
                f"{row['llc_mean']:.4g} ± {row['llc_sem']:.2g} | {row['mala_acceptance']:.3f} | "
                f"{row['split_rhat']:.3f} | {row['diverged_chains']} | {row['rising']} | {row['healthy']} |"
            )
        lines.append("")
        lines.append(f"Recommended: {self.recommended} — {self.reason}")
        return "\n".join(lines)


def calibrate(
    model: torch.nn.Module,
    data,
    loss: str | LossFn = "cross_entropy",
    epsilons: Sequence[float] | None = None,
    gammas: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
    nbetas: Sequence[float | None] = (None,),
    base: LLCConfig | None = None,
    num_burnin_steps: int = 2000,
    num_draws: int = 1000,
    num_chains: int = 4,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> CalibrationResult:
    """Run short estimates over the grid and recommend a setting by the criteria above.

    ``epsilons`` defaults to the automatic ε of ``base`` (measured once, at the first γ) times
    (0.1, 0.3, 1, 3, 10). ``nbetas`` entries of None mean n / log n. ``on_row`` is called with each
    row as it completes (for live display).
    """
    base = base or LLCConfig()
    short = base.replace(num_burnin_steps=num_burnin_steps, num_draws=num_draws, num_chains=num_chains)
    if epsilons is None:
        probe = estimate_llc(
            model, data, loss=loss, config=short.replace(gamma=gammas[0], num_draws=50, epsilon=None)
        )
        epsilons = [probe.epsilon * f for f in (0.1, 0.3, 1.0, 3.0, 10.0)]
    if not epsilons or not gammas or not nbetas:
        raise ValueError("calibrate: epsilons, gammas and nbetas must each have at least one value")
    table: list[dict[str, Any]] = []
    for nbeta in nbetas:
        for gamma in gammas:
            for epsilon in sorted(epsilons):
                config = short.replace(epsilon=float(epsilon), gamma=float(gamma), nbeta=nbeta)
                row = _row(estimate_llc(model, data, loss=loss, config=config))
                table.append(row)
                if on_row is not None:
                    on_row(row)
    recommended, reason = _recommend(table, base)
    return CalibrationResult(table=table, recommended=recommended, reason=reason)


def _row(result: LLCResult) -> dict[str, Any]:
    diag = result.diagnostics
    cfg = result.config
    low, high = cfg.mala_band
    mala = diag["mala_acceptance"]
    rhat = diag["split_rhat"]
    rising = bool(diag["plateau"].get("rising", False))
    diverged = len(diag["diverged_chains"])
    healthy = (
        diverged == 0
        and math.isfinite(result.llc_mean)
        and (not math.isfinite(mala) or low <= mala < high)
        and (not math.isfinite(rhat) or rhat <= cfg.rhat_threshold)
        and not rising
    )
    return {
        "epsilon": result.epsilon,
        "gamma": result.gamma,
        "nbeta": result.nbeta,
        "llc_mean": result.llc_mean,
        "llc_std": result.llc_std,
        "llc_sem": result.llc_sem,
        "mala_acceptance": mala,
        "split_rhat": rhat,
        "bulk_ess": diag["bulk_ess"],
        "diverged_chains": diverged,
        "rising": rising,
        "healthy": healthy,
        "warnings": sorted({w["code"] for w in result.warnings}),
    }


def _recommend(table: list[dict[str, Any]], base: LLCConfig) -> tuple[dict[str, Any] | None, str]:
    healthy = [row for row in table if row["healthy"]]
    if not healthy:
        return (
            None,
            "no healthy setting (every one diverged, mixed badly or kept rising); try smaller epsilons",
        )
    # Best nβ-group: the first nβ listed that has healthy rows (nβ is a modelling choice, not tuned).
    nbeta = healthy[0]["nbeta"]
    rows = [row for row in healthy if row["nbeta"] == nbeta]
    gammas = sorted({row["gamma"] for row in rows})
    per_gamma = {}
    for gamma in gammas:
        at_gamma = sorted((row for row in rows if row["gamma"] == gamma), key=lambda r: r["epsilon"])
        per_gamma[gamma] = _choose_epsilon(at_gamma)
    if len(gammas) == 1:
        gamma = gammas[0]
        why_gamma = "only one γ was healthy"
    else:
        changes = {}
        for i, gamma in enumerate(gammas):
            value = per_gamma[gamma][0]["llc_mean"]
            neighbours = [per_gamma[gammas[j]][0]["llc_mean"] for j in (i - 1, i + 1) if 0 <= j < len(gammas)]
            changes[gamma] = max(abs(v - value) for v in neighbours) / max(abs(value), 1e-12)
        gamma = min(gammas, key=lambda g: (round(changes[g], 3), g))
        why_gamma = f"γ = {gamma:g} is where λ̂ changes least between neighbouring γ ({changes[gamma]:.1%})"
    chosen, why_eps = per_gamma[gamma]
    recommended = {
        "epsilon": chosen["epsilon"],
        "gamma": chosen["gamma"],
        "nbeta": chosen["nbeta"],
        "llc_mean": chosen["llc_mean"],
        "llc_sem": chosen["llc_sem"],
    }
    return recommended, f"{why_gamma}; {why_eps}"


def _choose_epsilon(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The largest healthy ε (rows: the healthy rows of one γ, sorted by ε ascending)."""
    big = rows[-1]
    text = f"ε = {big['epsilon']:.3g} is the largest healthy step"
    if len(rows) == 1:
        return big, text + " (no smaller healthy step to compare with)"
    small = rows[-2]
    tolerance = 0.05 * abs(small["llc_mean"]) + 2 * math.hypot(
        _finite(big["llc_sem"]), _finite(small["llc_sem"])
    )
    agrees = abs(big["llc_mean"] - small["llc_mean"]) <= tolerance
    return big, text + (
        f"; it agrees with ε = {small['epsilon']:.3g} (converged in ε)"
        if agrees
        else f"; it differs from ε = {small['epsilon']:.3g} by more than 5 % + 2 sem: check with longer runs"
    )


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
