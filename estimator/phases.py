"""The two phases of a run: burn-in (warm-up) and sampling, and what both report as they go.

Burn-in with the automatic ε has two stages (docs/estimator.md, "How a run works"):

explore: the step is EXPLORE_FACTOR × ε (still far from the stability limit), so the chains spread
    into the flat, localizer-bounded directions of a singular model in a tenth of the steps; the
    curvature is re-measured at the chains on a doubling schedule and ε only ever shrinks. Its
    length is a number of relaxation times 2/(ε_step γ) of the flattest direction (or a share of an
    explicit ``num_burnin_steps``).
settle: the step is ε, the sampling step, so that the directions with curvature relax to the
    sampling phase's distribution before any draw is recorded; its losses also size the draws.

With a user-given ε the whole burn-in is one settle stage at that ε. Sampling then runs at a fixed
ε. Every CHECK_EVERY steps one host sync checks the chains' losses for divergence and reports progress.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import tuning
from .chains import ChainSet
from .curvature import Curvature
from .problem import Notes, Problem
from .result import ProgressEvent
from .stepsize import StepSize

# The progress callback is called at most this often (and at the end of each phase).
PROGRESS_INTERVAL_S = 0.5


class Stopped(Exception):
    """Raised inside the loop when the progress callback asks to stop."""


class AllDiverged(Exception):
    """Raised inside the loop when no healthy chain is left."""


class Progress:
    """Where the run stands (phase, planned draws and steps, draws done), told to the callback."""

    def __init__(self, callback: Callable[[ProgressEvent], Any] | None, started: float, num_chains: int,
                 num_draws: int, total_steps: int):
        self.callback = callback
        self.started = started
        self.num_chains = num_chains
        self.num_draws = num_draws
        self.total_steps = total_steps
        self.phase = "burnin"
        self.draws_done = [0] * num_chains
        self.last = -math.inf

    def report(self, steps_done: int, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.perf_counter()
        if not force and now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        event = ProgressEvent(
            phase=self.phase,
            draws_done=list(self.draws_done),
            num_draws=self.num_draws,
            num_chains=self.num_chains,
            steps_done=steps_done,
            total_steps=self.total_steps,
            elapsed_s=now - self.started,
        )
        if self.callback(event) is False:
            raise Stopped


@dataclass
class RunParts:
    """What both phases work on."""

    problem: Problem
    chains: ChainSet
    curvature: Curvature
    step: StepSize
    progress: Progress
    notes: Notes
    diverged: dict[int, dict[str, Any]] = field(default_factory=dict)  # chain -> where and how

    def sampling_steps(self) -> int:
        return tuning.sampling_steps(self.progress.num_draws, self.problem.config.num_steps_bw_draws)

    def mark_diverged(self, bad: dict[int, int], phase: str) -> None:
        """Stop the chains in ``bad`` ({chain: first bad step of the phase}); keep the draws before it."""
        bw = self.problem.config.num_steps_bw_draws
        suggestion = self.step.suggested()
        for c, step in sorted(bad.items()):
            # Draws are the losses at steps 0, bw, 2bw, ...: those before the bad step are kept.
            draws = 0 if phase == "burnin" else (step + bw - 1) // bw
            self.diverged[c] = {
                "chain": c,
                "phase": phase,
                "step": int(step),
                "draws_done": int(min(draws, self.progress.num_draws)),
                "suggested_epsilon": suggestion,
            }
            self.notes.add(
                "diverged",
                (
                    f"chain {c} diverged during {phase} at step {step} (loss became non-finite or exploded): "
                    f"the step size ε = {self.step.step:.3g} is too large for the curvature the chain met"
                    f"{self.step.stability_note()}; try epsilon ≤ {suggestion:.3g}"
                ),
                chain=c,
            )
        self.chains.drop(self.diverged)
        if not self.chains.chunks:
            raise AllDiverged


class BurnIn:
    def __init__(self, parts: RunParts):
        self.parts = parts
        config = parts.problem.config
        self.explicit = config.num_burnin_steps is not None
        # With automatic burn-in the length is decided during warm-up.
        self.num_burnin = config.num_burnin_steps if self.explicit else 0
        self.explore_steps = 0
        self.settle_steps = 0
        self.restarts = 0
        self.settle_losses: torch.Tensor | None = None  # (settle steps, chains)
        # Where the loop stands (set by ``run``).
        self.block_losses: torch.Tensor | None = None  # (CHECK_EVERY, chains): exploration losses since the last check
        self.exploring = False
        self.next_check: int | None = None  # step of the stage at which the curvature is measured next
        self.since_check = 0  # steps since the last divergence check (not reset between stages)
        self.t = 0  # steps of the current stage

    def _explore_length(self) -> int:
        return tuning.explore_length(self.parts.problem.config.num_burnin_steps, self.parts.step.step,
                                     self.parts.problem.gamma)

    def _settle_length(self) -> int:
        p = self.parts.problem
        return tuning.settle_length(p.config.num_burnin_steps, self.explore_steps, p.epsilon_given,
                                    self.parts.step.epsilon, p.gamma)

    def run(self) -> None:
        parts, step, chains = self.parts, self.parts.step, self.parts.chains
        C, device = parts.problem.num_chains, parts.problem.device
        parts.progress.phase = "burnin"
        self.block_losses = torch.full((tuning.CHECK_EVERY, C), float("nan"), dtype=torch.float64, device=device)
        parts.curvature.chain_vectors = None
        self.settle_losses = None
        step.safety = 1.0
        self.explore_steps = 0
        self.settle_steps = 0
        self.exploring = step.auto
        step.set_stage(self.exploring)
        self.next_check = 1 if step.auto else None
        self.since_check = 0
        self.t = 0
        while True:
            if self.exploring:
                if self.t >= self._explore_length():
                    self._start_settling()
                    continue
            else:
                if self.t >= self._settle_length():
                    break
                if self.settle_losses is None:
                    shape = (self._settle_length(), C)
                    self.settle_losses = torch.full(shape, float("nan"), dtype=torch.float64, device=device)
            record = self.block_losses[self.since_check] if self.exploring else self.settle_losses[self.t]
            chains.step(record, step.step)
            self.t += 1
            self.since_check += 1
            if self.since_check >= tuning.CHECK_EVERY and self._check():
                continue
            if self.next_check is not None and self.t >= self.next_check:
                self._adapt(self.exploring)
                self.next_check = tuning.next_curvature_check(self.next_check)
        self._finish()

    def _adapt(self, exploring: bool) -> None:
        measured = self.parts.curvature.at_chains(self.parts.chains.positions())
        self.parts.step.adapt(exploring, measured, self.parts.chains.steps_done)

    def _start_settling(self) -> None:
        self.exploring = False
        self.explore_steps = self.t
        self._adapt(exploring=False)
        self.t = 0
        self.next_check = tuning.CURVATURE_CHECK_PERIOD

    def _check(self) -> bool:
        """The divergence check and progress report of a block of steps; True if warm-up restarted."""
        parts, chains = self.parts, self.parts.chains
        since, t = self.since_check, self.t
        recorded = self.block_losses[:since] if self.exploring else self.settle_losses[t - since : t]
        bad = chains.bad_chains(recorded, t - since, parts.diverged)
        block_mean = float(recorded.nanmean())
        if not bad and math.isfinite(block_mean):
            parts.step.block_history.append((chains.steps_done, block_mean))
        self.since_check = 0
        planned = (self._explore_length() if self.exploring else self.explore_steps) + (
            self._settle_length() if not self.exploring or self.explicit else 0
        )
        parts.progress.total_steps = max(chains.steps_done, planned) + parts.sampling_steps()
        self.block_losses.fill_(float("nan"))
        if bad:
            if parts.step.auto and self.restarts < tuning.MAX_BURNIN_RESTARTS:
                self._restart(sorted(bad))
                return True
            parts.mark_diverged(bad, phase="burnin")
        parts.progress.report(chains.steps_done)
        return False

    def _restart(self, bad: list[int]) -> None:
        """A chain blew up during warm-up: shrink ε, put every chain back at w*, start warm-up again."""
        parts, step = self.parts, self.parts.step
        self.restarts += 1
        step.shrink()
        parts.notes.add(
            "burnin_restart",
            f"chain(s) {bad} diverged during warm-up; restarted every chain at w* with the step size reduced to "
            f"{step.step:.3g} (sampling ε {step.epsilon:.3g})",
        )
        parts.chains.restart(step.step)
        parts.curvature.chain_vectors = None
        self.exploring = True
        self.settle_losses = None
        self.t = 0
        self.next_check = 1

    def _finish(self) -> None:
        parts, chains = self.parts, self.parts.chains
        if self.since_check:
            start = self.t - self.since_check
            if self.settle_losses is None:  # warm-up ended without a settle step: the last steps explored
                recorded = self.block_losses[: self.since_check]
            else:
                recorded = self.settle_losses[start : self.t]
            bad = chains.bad_chains(recorded, start, parts.diverged)
            if bad:
                parts.mark_diverged(bad, phase="burnin")
        self.settle_steps = self.t
        self.num_burnin = self.explore_steps + self.settle_steps
        chains.freeze()
        parts.progress.report(chains.steps_done, force=True)

    def automatic_num_draws(self) -> int:
        """Draws for the target precision, predicted from the settle stage of the healthy chains."""
        parts = self.parts
        healthy = [c for c in range(parts.problem.num_chains) if c not in parts.diverged]
        losses = None
        if self.settle_losses is not None and healthy:
            losses = self.settle_losses[:, healthy].cpu().numpy()
        p = parts.problem
        return tuning.num_draws(losses, p.nbeta, parts.step.init_loss, p.config.num_steps_bw_draws)


class Sampling:
    def __init__(self, parts: RunParts):
        self.parts = parts
        p = parts.problem
        self.losses = torch.empty((0, p.num_chains), dtype=torch.float64, device=p.device)  # (steps, chains)
        self.steps_done = 0

    def run(self) -> None:
        parts, chains, progress = self.parts, self.parts.chains, self.parts.progress
        p = parts.problem
        progress.phase = "sampling"
        steps = parts.sampling_steps()
        bw = p.config.num_steps_bw_draws
        self.losses = torch.full((steps, p.num_chains), float("nan"), dtype=torch.float64, device=p.device)
        mala_every = tuning.mala_every(steps, p.config.sampler)
        epsilon = parts.step.step  # ε, unless no curvature check since exploring measured anything
        since_check = 0
        self.steps_done = 0
        for t in range(steps):
            mala = mala_every is not None and t % mala_every == mala_every // 2
            chains.step(self.losses[t], epsilon, mala=mala)
            self.steps_done = t + 1
            since_check += 1
            if since_check >= tuning.CHECK_EVERY or t == steps - 1:
                bad = chains.bad_chains(self.losses[t + 1 - since_check : t + 1], t + 1 - since_check, parts.diverged)
                if bad:
                    parts.mark_diverged(bad, phase="sampling")
                since_check = 0
                done = t // bw + 1
                progress.draws_done = [
                    parts.diverged[c]["draws_done"] if c in parts.diverged else done for c in range(p.num_chains)
                ]
                progress.report(chains.steps_done, force=t == steps - 1)
