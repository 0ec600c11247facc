"""The state_dict spec of an architecture whose kind builds another library's model (``hf``,
``torchvision``), computed in a short-lived process: ``python -m worker.inspect_architecture``.

The API process never imports torch, transformers or torchvision; it writes the normalized
architecture JSON to this command's stdin and reads one JSON line from stdout:
``{"ok": true, "spec": {key: {"shape", "parameter", "integer", "tied_to"}}, "num_params": int}`` or
``{"ok": false, "error": "..."}`` (exit status 2). The model is built on torch's meta device (no
memory for weights) with the Hugging Face hub switched off: nothing is downloaded, and only the
allowlisted classes of transformers and torchvision are built (never repository code).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MAX_INPUT_BYTES = 1 << 20


def spec_of(config: Any) -> dict[str, Any]:
    """The inspector's answer for ``config`` (an architecture, normalized again here), as a dict."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from estimator import architectures

    try:
        normalized = architectures.normalize(config)
        spec = architectures.state_dict_spec(normalized)
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the API as a message
        return {"ok": False, "error": _describe(exc)}
    return {
        "ok": True,
        "spec": {key: value.to_json() for key, value in spec.items()},
        "num_params": architectures.count_params(spec),
    }


def _describe(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    from estimator.architectures import ArchitectureError

    if isinstance(exc, ArchitectureError):
        return " ".join(lines)[:1000]
    return f"the architecture cannot be built: {type(exc).__name__}: {' '.join(lines[:3])}"[:1000]


def main(argv: list[str]) -> int:
    if argv:
        print(json.dumps({"ok": False, "error": "usage: python -m worker.inspect_architecture < architecture.json"}))
        return 2
    text = sys.stdin.read(MAX_INPUT_BYTES + 1)
    if len(text) > MAX_INPUT_BYTES:
        result: dict[str, Any] = {"ok": False, "error": f"architecture JSON larger than {MAX_INPUT_BYTES} bytes"}
    else:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            result = {"ok": False, "error": f"architecture is not valid JSON: {exc}"}
        else:
            result = spec_of(config)
    print(json.dumps(result))
    return 0 if result["ok"] else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
