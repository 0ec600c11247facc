"""``LLCConfig``: every knob of an LLC estimate, validated on construction, and the names the
estimator accepts (samplers, losses, chain modes, dtypes).

Fields left at ``None`` are resolved by :func:`estimator.estimate_llc` from the model and data
(the rules are in docs/estimator.md); the resolved values are reported in ``LLCResult.config``.

Plain Python, no torch: the API imports this module to check job configs by these rules, and the
estimator's own tables (``samplers.KERNELS``, ``losses.LOSSES``) are keyed by these names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SAMPLERS = ("sgld", "rmsprop_sgld", "sgnht")
# By name; estimate_llc also takes a callable. causal_lm and masked_lm score token data (logits
# [B, T, V] against token labels [B, T]); cross_entropy also scores sequence classification.
LOSSES = ("cross_entropy", "mse", "nll", "bce_with_logits", "causal_lm", "masked_lm")
CHAIN_MODES = ("auto", "vmap", "sequential")
# "bfloat16": the chains stay float32, the model's forward and backward run under bfloat16 autocast.
DTYPES = ("float32", "float64", "bfloat16")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LLCConfig:
    """Settings of one LLC estimate. ``None`` means "choose automatically" (see docs/estimator.md).

    sampler: "sgld" (the paper's SGLD), "rmsprop_sgld" or "sgnht".
    epsilon: step size. None: chosen from the curvature the chains meet (top Hessian eigenvalue
        by power iteration at w* and at warm-up samples) so that the quadratic discretisation bias
        ``1/(1 - epsilon*a/4)`` stays near ``target_bias``.
    gamma: localisation strength (the localizing prior's precision around w*).
    nbeta: n * beta, the inverse temperature times n. None: n / log(n).
    num_chains: independent chains.
    num_draws: draws per chain after burn-in. None: sized from the measured mixing time.
    num_burnin_steps: steps per chain discarded before the draws. None: sized from mixing time.
    num_steps_bw_draws: sampler steps between two recorded draws.
    batch_size: minibatch size of the gradient and of the recorded loss. None: min(n, 512).
    seed: every random choice (minibatch orders, noise) derives from it.
    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    dtype: "float32" or "float64" for the chains and the data; "bfloat16" keeps the chains and the
        data in float32 and runs the model's forward and backward under bfloat16 autocast
        (bfloat16 weights cannot hold SGLD steps of ~1e-4 relative size; accuracy cost in
        docs/validation.md).
    chain_mode: "auto" (vmap when the model supports it), "vmap" or "sequential".
    max_chains_per_chunk: vectorise at most this many chains at once (bounds memory). None: all.
    target_bias: the quadratic discretisation bias the automatic epsilon aims at (0.01 = 1 %).
    rhat_threshold, min_ess, mala_band: thresholds of the diagnostic warnings.
    """

    sampler: str = "sgld"
    epsilon: float | None = None
    gamma: float | None = None
    nbeta: float | None = None
    num_chains: int = 8
    num_draws: int | None = None
    num_burnin_steps: int | None = None
    num_steps_bw_draws: int = 1
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    chain_mode: str = "auto"
    max_chains_per_chunk: int | None = None
    target_bias: float = 0.01
    rhat_threshold: float = 1.05
    min_ess: float = 100.0
    mala_band: tuple[float, float] = field(default=(0.8, 1.0))

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"LLCConfig.sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
        for name in ("epsilon", "gamma", "nbeta"):
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"LLCConfig.{name} must be a positive finite number or None; got {value!r}")
        for name in ("num_chains", "num_steps_bw_draws"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"LLCConfig.{name} must be an integer >= 1; got {value!r}")
        for name in ("num_draws", "batch_size", "max_chains_per_chunk"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"LLCConfig.{name} must be an integer >= 1 or None; got {value!r}")
        if self.num_burnin_steps is not None and (
            not _is_int(self.num_burnin_steps) or self.num_burnin_steps < 0
        ):
            raise ValueError(
                f"LLCConfig.num_burnin_steps must be an integer >= 0 or None; got {self.num_burnin_steps!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"LLCConfig.seed must be a non-negative integer; got {self.seed!r}")
        if not isinstance(self.device, str) or not _valid_device(self.device):
            raise ValueError(
                f"LLCConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"LLCConfig.dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.chain_mode not in CHAIN_MODES:
            raise ValueError(
                f"LLCConfig.chain_mode must be one of {', '.join(CHAIN_MODES)}; got {self.chain_mode!r}"
            )
        if not _is_number(self.target_bias) or not 0 < self.target_bias < 0.5:
            raise ValueError(f"LLCConfig.target_bias must be a number in (0, 0.5); got {self.target_bias!r}")
        if not _is_number(self.rhat_threshold) or self.rhat_threshold <= 1:
            raise ValueError(f"LLCConfig.rhat_threshold must be a number > 1; got {self.rhat_threshold!r}")
        if not _is_number(self.min_ess) or self.min_ess < 0:
            raise ValueError(f"LLCConfig.min_ess must be a number >= 0; got {self.min_ess!r}")
        band = self.mala_band
        if (
            not isinstance(band, (tuple, list))
            or len(band) != 2
            or not all(_is_number(b) for b in band)
            or not 0 <= band[0] < band[1] <= 1
        ):
            raise ValueError(
                f"LLCConfig.mala_band must be a pair (low, high) with 0 <= low < high <= 1; got {band!r}"
            )
        object.__setattr__(self, "mala_band", (float(band[0]), float(band[1])))

    def replace(self, **changes: Any) -> LLCConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mala_band"] = list(self.mala_band)
        return out

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> LLCConfig:
        """Build from a plain dict (e.g. a job's JSON); unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown LLCConfig field(s): {', '.join(unknown)}")
        values = dict(fields)
        if isinstance(values.get("mala_band"), list):
            values["mala_band"] = tuple(values["mala_band"])
        return cls(**values)


def constant_defaults() -> dict[str, Any]:
    """The fields whose default is a fixed value, as JSON values. The others default to None and are
    resolved from the model and data when an estimate runs."""
    defaults = {}
    for f in dataclasses.fields(LLCConfig):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if value is not None:
            defaults[f.name] = list(value) if isinstance(value, tuple) else value
    return defaults


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    if device.startswith("cuda:"):
        return device[5:].isdigit()
    return False
