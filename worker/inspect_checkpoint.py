"""Inspect an uploaded ``torch.save`` checkpoint in a short-lived process: ``python -m worker.inspect_checkpoint PATH``.

The API process never imports torch or runs an unpickler; it runs this instead and reads one JSON
object from stdout: ``{"ok": true, "tensors": {key: {"shape", "dtype", "non_finite"}}}`` or
``{"ok": false, "error": "..."}`` (exit status 2). Loading is ``torch.load(weights_only=True)`` only:
the restricted unpickler refuses any global that is not a tensor or plain container, so a malicious
pickle fails here without running.
"""

from __future__ import annotations

import json
import pickle
import sys
from typing import Any

CHUNK_ELEMENTS = 4 * 1024 * 1024


def inspect_state_dict(path: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the API as a message
        return {"ok": False, "error": _describe_load_error(exc)}
    if not isinstance(state, dict):
        return {"ok": False, "error": f"expected a state_dict (a dict of name -> tensor), got {type(state).__name__}"}
    tensors: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            return {"ok": False, "error": f"state_dict keys must be strings, got {key!r}"}
        if not isinstance(value, torch.Tensor):
            hint = " (save model.state_dict(), not a dict that contains it)" if isinstance(value, dict) else ""
            return {"ok": False, "error": f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor{hint}"}
        tensors[key] = {
            "shape": list(value.shape),
            "dtype": str(value.dtype).removeprefix("torch."),
            "non_finite": _count_non_finite(value),
        }
    return {"ok": True, "tensors": tensors}


def _describe_load_error(exc: Exception) -> str:
    """The informative line of a load failure. torch's own advice to retry with weights_only=False
    is dropped: that is exactly what must never be done with an uploaded file."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, pickle.UnpicklingError):
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
        return (
            "refused by the weights-only loader: the file holds more than tensors and plain containers "
            f"({detail})"
        )[:1000]
    return f"not loadable as a torch.save state_dict: {type(exc).__name__}: {lines[0] if lines else ''}"[:1000]


def _count_non_finite(tensor: Any) -> int:
    import torch

    if not tensor.is_floating_point():
        return 0
    flat = tensor.reshape(-1)
    bad = 0
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):  # bounded memory for big tensors
        bad += int((~torch.isfinite(flat[start : start + CHUNK_ELEMENTS])).sum())
    return bad


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(json.dumps({"ok": False, "error": "usage: python -m worker.inspect_checkpoint PATH"}))
        return 2
    result = inspect_state_dict(argv[0])
    print(json.dumps(result))
    return 0 if result["ok"] else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
