"""What an estimate returns (``LLCResult``) and what the progress callback receives (``ProgressEvent``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import LLCConfig


@dataclass(frozen=True)
class ProgressEvent:
    """Passed to ``progress(event)`` at most every ~0.5 s and once at the end of each phase.

    Return ``False`` from the callback to stop sampling cleanly; anything else continues.
    """

    phase: str  # "burnin" or "sampling"
    draws_done: list[int]  # per chain (a diverged chain stays at the draws it completed)
    num_draws: int  # draws per chain when the run completes
    num_chains: int
    steps_done: int  # steps per chain, burn-in included
    total_steps: int  # steps per chain of the whole run (may grow while burn-in is adaptive)
    elapsed_s: float

    @property
    def fraction(self) -> float:
        return min(1.0, self.steps_done / self.total_steps) if self.total_steps else 0.0


@dataclass
class LLCResult:
    """An LLC estimate with everything needed to judge it.

    ``llc_mean`` / ``llc_std``: mean and standard deviation across healthy chains of the per-chain
    estimates ``nβ (mean of the chain's draws - init_loss)``. ``loss_trace`` and ``llc_trace`` are
    arrays of shape (chains, draws): the minibatch loss at each draw and the running estimate
    ``nβ (running mean of the loss - init_loss)``; entries a chain did not reach are NaN.
    """

    llc_mean: float
    llc_std: float
    llc_per_chain: np.ndarray
    init_loss: float
    loss_trace: np.ndarray
    llc_trace: np.ndarray
    nbeta: float
    n: int
    config: LLCConfig
    diagnostics: dict[str, Any]
    warnings: list[dict[str, Any]]
    timings: dict[str, float]
    chain_mode: str
    chain_mode_reason: str
    stopped: bool = False
    epsilon: float = float("nan")
    gamma: float = float("nan")
    num_params: int = 0
    init_loss_samples: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def llc_sem(self) -> float:
        """Standard error of llc_mean across healthy chains (std / sqrt(chains))."""
        healthy = np.isfinite(self.llc_per_chain)
        k = int(healthy.sum())
        return self.llc_std / math.sqrt(k) if k > 1 else float("nan")

    def to_dict(self, include_traces: bool = True) -> dict[str, Any]:
        """Only JSON-serialisable values (NaN/Inf become None)."""
        out: dict[str, Any] = {
            "llc_mean": _num(self.llc_mean),
            "llc_std": _num(self.llc_std),
            "llc_per_chain": _jsonable(self.llc_per_chain),
            "init_loss": _num(self.init_loss),
            "nbeta": _num(self.nbeta),
            "n": int(self.n),
            "epsilon": _num(self.epsilon),
            "gamma": _num(self.gamma),
            "num_params": int(self.num_params),
            "init_loss_samples": int(self.init_loss_samples),
            "config": _jsonable(self.config.to_dict()),
            "diagnostics": _jsonable(self.diagnostics),
            "warnings": _jsonable(self.warnings),
            "timings": _jsonable(self.timings),
            "chain_mode": self.chain_mode,
            "chain_mode_reason": self.chain_mode_reason,
            "stopped": bool(self.stopped),
            "extras": _jsonable(self.extras),
        }
        if include_traces:
            out["loss_trace"] = _jsonable(self.loss_trace)
            out["llc_trace"] = _jsonable(self.llc_trace)
        return out

    def summary(self) -> str:
        text = f"λ̂ = {self.llc_mean:.4g} ± {self.llc_std:.2g} (nβ = {self.nbeta:.4g}, ε = {self.epsilon:.3g}, γ = {self.gamma:.3g})"
        if self.warnings:
            text += "\n" + "\n".join(f"  [{w['code']}] {w['message']}" for w in self.warnings)
        return text


def _num(value: Any) -> float | int | None:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return _num(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # a 0-d torch tensor
        return _jsonable(value.item())
    return str(value)
