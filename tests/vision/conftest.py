"""tests/vision run where torchvision imports beside the installed torch: ``make test`` runs them in
``.venv-vision`` (torch 2.14.1 + torchvision 0.29.1, see docs/models.md). In the main ``.venv``
(torch 2.13 CPU, no torchvision build for it on PyPI that imports) every test here is skipped, with
the reason. Any test file of this folder may rely on this rule; ``TORCHVISION_ERROR`` says why
torchvision is unusable (None when it imports).
"""

from __future__ import annotations

import pytest


def _torchvision_error() -> str | None:
    try:
        import torchvision  # noqa: F401
        from torchvision import models

        models.resnet18(weights=None, num_classes=2)  # the C++ ops register at import; this proves they did
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch fails in many ways
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


TORCHVISION_ERROR = _torchvision_error()


def pytest_collection_modifyitems(config, items):
    if TORCHVISION_ERROR is None:
        return
    import torch

    skip = pytest.mark.skip(
        reason=(
            f"torchvision does not import beside torch {torch.__version__} ({TORCHVISION_ERROR}); "
            "`make test` runs tests/vision in .venv-vision (make install-vision), see docs/models.md"
        )
    )
    for item in items:
        if "tests/vision/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
