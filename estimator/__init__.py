"""lambdahat's estimator: the local learning coefficient (LLC) of a PyTorch model at its weights.

    from estimator import estimate_llc, LLCConfig, LLCResult
    result = estimate_llc(model, (inputs, targets), loss="cross_entropy", config=LLCConfig(seed=0))

A pure library (torch + numpy). See docs/estimator.md.
"""

from .calibrate import CalibrationResult, calibrate
from .config import LLCConfig
from .llc import estimate_llc
from .result import LLCResult, ProgressEvent

__all__ = ["CalibrationResult", "LLCConfig", "LLCResult", "ProgressEvent", "calibrate", "estimate_llc"]
