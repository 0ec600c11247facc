"""lambdahat's estimator: the local learning coefficient (LLC) of a PyTorch model at its weights.

    from estimator import estimate_llc, LLCConfig, LLCResult
    result = estimate_llc(model, (inputs, targets), loss="cross_entropy", config=LLCConfig(seed=0))
    result = estimate_llc(hf_model, {"input_ids": ids}, loss="causal_lm")   # a transformers model

Token data (a dict with ``input_ids`` or a Hugging Face ``Dataset``) is read by estimator/tokens.py,
transformers models are wrapped by estimator/hf.py, and estimator/memory.py sizes a run before it
starts (pure Python).

A pure library (torch + numpy; matplotlib for `estimator.plots` only). See docs/estimator.md.

Importing the package does not import torch: ``LLCConfig`` and the vocabulary of accepted names
(``estimator.config``) are plain Python, so the API validates job configs with the estimator's own
rules without loading torch. The other names load torch on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import LLCConfig

if TYPE_CHECKING:
    from .calibrate import CalibrationResult, calibrate
    from .llc import estimate_llc
    from .result import LLCResult, ProgressEvent

_LAZY = {"CalibrationResult": ".calibrate", "calibrate": ".calibrate", "estimate_llc": ".llc",
         "LLCResult": ".result", "ProgressEvent": ".result"}

__all__ = ["CalibrationResult", "LLCConfig", "LLCResult", "ProgressEvent", "calibrate", "estimate_llc"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
