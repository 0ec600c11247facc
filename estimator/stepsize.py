"""The step size of a run: ε for sampling and the step of the moment, from the curvature the chains meet.

With a user-given ε both are that ε. With the automatic one (docs/estimator.md, "Step size"), ε is
re-derived from each curvature measurement at the chains, only ever shrinks through the largest
curvature met, and the exploration stage of warm-up steps EXPLORE_FACTOR times further.
"""

from __future__ import annotations

import math

from . import tuning
from .problem import Problem


class StepSize:
    def __init__(self, problem: Problem, init_loss: float, h_star: float, h_near: float | None):
        """``h_star``: the top curvature at w* (NaN with a given ε); ``h_near``: the one probed near w*."""
        self.problem = problem
        self.init_loss = init_loss
        self.auto = not problem.epsilon_given
        self.h_star = h_star
        # Largest top curvature met anywhere (bounds ε for stability) and the chains' typical one
        # (their mean top curvature: the quadratic bias is linear in it, so it sets ε for accuracy).
        self.h_seen = h_star if self.auto else 0.0
        if h_near is not None:
            self.h_seen = h_near
        self.h_typ = self.h_seen
        self.h_typ_history: list[tuple[int, float]] = []
        # Mean Hessian trace at the chains (Hutchinson) and the running λ̂ of warm-up.
        self.trace_typ: float | None = None
        self.trace_history: list[tuple[int, float]] = []
        self.llc_warm: float | None = None
        self.block_history: list[tuple[int, float]] = []  # (step, mean loss of a block of warm-up steps)
        self.safety = 1.0  # divided by RESTART_SHRINK at each warm-up restart
        self.epsilon = float(problem.config.epsilon) if not self.auto else self._sampling()
        self.step = self.epsilon  # the step of the moment (larger while exploring)

    def _sampling(self) -> float:
        p = self.problem
        return tuning.sampling_epsilon(
            self.h_typ, self.h_seen, p.nbeta, p.gamma, p.config.target_bias, self.trace_typ, self.llc_warm
        )

    def _explore(self) -> float:
        p = self.problem
        return tuning.explore_epsilon(
            self.h_typ, self.h_seen, p.nbeta, p.gamma, p.config.target_bias, self.trace_typ, self.llc_warm
        )

    def set_stage(self, exploring: bool) -> None:
        """Re-derive ε and the step for the stage of warm-up (exploring or settling)."""
        if self.auto:
            self.epsilon = self._sampling() * self.safety
            self.step = self._explore() * self.safety if exploring else self.epsilon
        else:
            self.step = self.epsilon

    def adapt(self, exploring: bool, measured: tuple[float, float, float], now: int) -> None:
        """Take in a curvature measurement at the chains ``(top max, top mean, trace)`` made at step
        ``now`` and re-derive ε from it and the running λ̂."""
        h_max, h_mean, trace = measured
        if not (math.isfinite(h_max) and math.isfinite(h_mean)):
            return
        self.h_seen = max(self.h_seen, h_max)
        # Typical values once the chains have spread: means over the later half of warm-up so far.
        self.h_typ_history.append((now, h_mean))
        self.h_typ = tuning.recent_mean(self.h_typ_history, now)
        if math.isfinite(trace):
            self.trace_history.append((now, trace))
            self.trace_typ = tuning.recent_mean(self.trace_history, now)
        if self.block_history:
            self.llc_warm = self.problem.nbeta * (tuning.recent_mean(self.block_history, now) - self.init_loss)
        self.set_stage(exploring)

    def shrink(self) -> None:
        """After a blow-up in warm-up: a smaller step, from the start of exploration."""
        self.safety /= tuning.RESTART_SHRINK
        self.set_stage(exploring=True)

    def suggested(self) -> float:
        p = self.problem
        return tuning.suggested_epsilon(self.step, self.h_seen, p.nbeta, p.gamma, p.config.target_bias, not self.auto)

    def stability_note(self) -> str:
        """The curvature behind a divergence, for its warning (empty with a given ε)."""
        if not self.auto:
            return ""
        p = self.problem
        return (
            f" (top Hessian eigenvalue seen ≈ {self.h_seen:.3g}, so ε·(nβ·h + γ)/4 = "
            f"{self.step * (p.nbeta * self.h_seen + p.gamma) / 4:.3g})"
        )
