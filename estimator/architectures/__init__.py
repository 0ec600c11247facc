"""The architecture registry: the built-in model kinds, each defined once, in its own module.

A safetensors or ``.pt`` checkpoint is only weights; the service rebuilds the network from an
``architecture`` config such as ``{"kind": "mlp", "in_features": 16, "hidden": [32], "out_features": 3}``.
Each kind's module (``mlp.py``, ``dln.py``, ``cnn.py``, ``resnet.py``, ``transformer.py``) holds, for
that kind alone:

- ``normalize(config)``: validate a config and fill in its defaults (what is stored and built);
- ``state_dict_spec(config)``: every state_dict key and shape of the module it builds, without torch,
  so the API checks an upload before storing it;
- ``build(config)``: the freshly initialised ``torch.nn`` module (torch is imported here only);
- optionally ``infer(model)``: the config of a user's own module, for the SDK's uploads.

Adding a kind is one module with these functions, one entry in ``_KINDS`` and its tests
(``tests/service/test_architectures.py`` checks spec against build for every kind listed there).
Importing this package does not import torch.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from . import cnn, dln, mlp, resnet, transformer
from .fields import ACTIVATIONS, ArchitectureError, TensorSpec

__all__ = [
    "ACTIVATIONS", "KINDS", "ArchitectureError", "TensorSpec", "build_model", "check_weights",
    "infer_architecture", "normalize", "num_params", "state_dict_spec",
]

# Inference asks the kinds in this order: the narrower dln before mlp, whose near-miss errors explain.
_KINDS: dict[str, ModuleType] = {kind.KIND: kind for kind in (dln, mlp, cnn, resnet, transformer)}
KINDS = tuple(_KINDS)

MAX_PARAMS = 1 << 36  # a clear error for a typo like 10**9 widths, before any allocation


def normalize(config: Any) -> dict[str, Any]:
    """Validate ``config`` and return it with every default filled in (what is stored and built)."""
    if not isinstance(config, dict):
        raise ArchitectureError(f"architecture must be a JSON object with a 'kind' field, got {type(config).__name__}")
    kind = config.get("kind")
    if kind not in _KINDS:
        raise ArchitectureError(f"architecture 'kind' must be one of {list(KINDS)}, got {kind!r}")
    normalized = _KINDS[kind].normalize(config)
    total = num_params(normalized)
    if total > MAX_PARAMS:
        raise ArchitectureError(f"{kind}: {total} parameters is more than this service accepts ({MAX_PARAMS})")
    return normalized


def state_dict_spec(config: dict[str, Any]) -> dict[str, TensorSpec]:
    """The state_dict of the module ``config`` builds (``config`` as returned by :func:`normalize`)."""
    return _KINDS[config["kind"]].state_dict_spec(config)


def num_params(config: dict[str, Any]) -> int:
    return sum(spec.numel for spec in state_dict_spec(config).values() if spec.parameter)


def build_model(architecture: dict[str, Any]) -> Any:
    """The ``torch.nn`` module for ``architecture`` (validated and defaults filled first), freshly initialised."""
    config = normalize(architecture)
    return _KINDS[config["kind"]].build(config)


def infer_architecture(model: Any) -> dict[str, Any]:
    """The architecture config of a user's module, when a kind recognises it.

    Recognised today: ``nn.Sequential`` stacks of Linear layers (``dln`` without biases or
    activations, ``mlp`` with one activation between each two). Anything else raises ``ValueError``
    asking for ``architecture=``.
    """
    for kind in _KINDS.values():
        infer = getattr(kind, "infer", None)
        config = infer(model) if infer is not None else None
        if config is not None:
            return config
    recognising = [name for name, kind in _KINDS.items() if hasattr(kind, "infer")]
    raise ValueError(
        f"cannot infer the architecture of a {type(model).__name__}: only nn.Sequential stacks of Linear "
        f"layers ({', '.join(recognising)}) are recognised; pass architecture={{...}} explicitly, e.g. "
        '{"kind": "mlp", "in_features": 16, "hidden": [32], "out_features": 3, "activation": "relu"}'
    )


# ---------------------------------------------------------------------------------------------
# Checking uploaded weights

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8")


def check_weights(config: dict[str, Any], tensors: dict[str, tuple[tuple[int, ...], str]]) -> list[str]:
    """Compare uploaded ``tensors`` (key -> (shape, dtype name)) with ``config``'s state_dict.

    Returns the problems (empty when the weights fit), each naming keys and shapes, so that one 422
    can list everything that is wrong at once.
    """
    expected = state_dict_spec(config)
    problems: list[str] = []
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    mismatched = []
    bad_dtypes = []
    for key, spec in expected.items():
        if key not in tensors:
            continue
        shape, dtype = tensors[key]
        if tuple(shape) != spec.shape:
            mismatched.append(f"{key}: expected {list(spec.shape)}, got {list(shape)}")
        allowed = INT_DTYPES if spec.integer else FLOAT_DTYPES
        if dtype not in allowed:
            bad_dtypes.append(f"{key}: {dtype} (expected one of {', '.join(allowed)})")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if bad_dtypes:
        problems.append(f"unsupported dtypes: {_listing(bad_dtypes)}")
    return problems


def _listing(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")
