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

Two kinds build models of other libraries: ``hf`` (transformers) and ``torchvision``. Their
``normalize`` stays plain Python, but their state_dict spec comes from a build on torch's meta device
(``SPEC_NEEDS_TORCH = True``): the API asks a short-lived ``python -m worker.inspect_architecture``
process for it (:func:`spec_needs_torch` says when), and passes it to :func:`check_weights` as
``expected``. docs/models.md lists what they accept and what they refuse.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from . import cnn, dln, hf, mlp, resnet, transformer
from . import torchvision as torchvision_kind
from .fields import ACTIVATIONS, ArchitectureError, TensorSpec

__all__ = [
    "ACTIVATIONS", "KINDS", "ArchitectureError", "TensorSpec", "build_model", "check_weights",
    "count_params", "infer_architecture", "normalize", "num_params", "spec_from_json", "spec_needs_torch", "state_dict_spec",
    "token_limits",
]

# Inference asks the kinds in this order: the narrower dln before mlp, whose near-miss errors explain.
_KINDS: dict[str, ModuleType] = {
    kind.KIND: kind for kind in (dln, mlp, cnn, resnet, transformer, hf, torchvision_kind)
}
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
    if spec_needs_torch(normalized):
        return normalized  # its parameter count comes from the inspector (worker/inspect_architecture.py)
    total = num_params(normalized)
    if total > MAX_PARAMS:
        raise ArchitectureError(f"{kind}: {total} parameters is more than this service accepts ({MAX_PARAMS})")
    return normalized


def state_dict_spec(config: dict[str, Any]) -> dict[str, TensorSpec]:
    """The state_dict of the module ``config`` builds (``config`` as returned by :func:`normalize`)."""
    return _KINDS[config["kind"]].state_dict_spec(config)


def spec_needs_torch(config: dict[str, Any]) -> bool:
    """Whether ``config``'s kind computes its state_dict spec by building on torch's meta device (the API
    asks ``worker.inspect_architecture`` in a subprocess instead of calling :func:`state_dict_spec`)."""
    return bool(getattr(_KINDS.get(config.get("kind")), "SPEC_NEEDS_TORCH", False))


def spec_from_json(spec: dict[str, dict[str, Any]]) -> dict[str, TensorSpec]:
    """The inspector's JSON spec (``{key: {"shape", "parameter", "integer", "tied_to"}}``) as TensorSpecs."""
    return {key: TensorSpec.from_json(value) for key, value in spec.items()}


def num_params(config: dict[str, Any]) -> int:
    """Trainable parameters, each tied parameter counted once."""
    return count_params(state_dict_spec(config))


def count_params(spec: dict[str, TensorSpec]) -> int:
    return sum(s.numel for s in spec.values() if s.parameter and s.tied_to is None)


def token_limits(config: dict[str, Any]) -> tuple[int, int] | None:
    """(vocab_size, context length) of a normalized language-model config: token ids must be below the
    first and sequences at most the second long. None for kinds that do not take tokens."""
    if config.get("kind") == hf.KIND:
        return hf.token_limits(config)
    if config.get("kind") == transformer.KIND:
        return config["vocab_size"], config["context_length"]
    return None


def build_model(architecture: dict[str, Any]) -> Any:
    """The ``torch.nn`` module for ``architecture`` (validated and defaults filled first), freshly initialised."""
    config = normalize(architecture)
    return _KINDS[config["kind"]].build(config)


def infer_architecture(model: Any) -> dict[str, Any]:
    """The architecture config of a user's module, when a kind recognises it.

    Recognised today: ``nn.Sequential`` stacks of Linear layers (``dln`` without biases or
    activations, ``mlp`` with one activation between each two), transformers ``PreTrainedModel``s of
    the allowlisted types (``hf``) and models of torchvision's allowlisted builders (``torchvision``).
    Anything else raises ``ValueError`` asking for ``architecture=``.
    """
    for kind in _KINDS.values():
        infer = getattr(kind, "infer", None)
        config = infer(model) if infer is not None else None
        if config is not None:
            return config
    recognising = [name for name, kind in _KINDS.items() if hasattr(kind, "infer")]
    raise ValueError(
        f"cannot infer the architecture of a {type(model).__name__}: only nn.Sequential stacks of Linear "
        "layers, transformers models and torchvision classification models "
        f"({', '.join(recognising)}) are recognised; pass architecture={{...}} explicitly, e.g. "
        '{"kind": "mlp", "in_features": 16, "hidden": [32], "out_features": 3, "activation": "relu"}'
    )


# ---------------------------------------------------------------------------------------------
# Checking uploaded weights

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8")


def check_weights(
    config: dict[str, Any],
    tensors: dict[str, tuple[tuple[int, ...], str]],
    expected: dict[str, TensorSpec] | None = None,
) -> list[str]:
    """Compare uploaded ``tensors`` (key -> (shape, dtype name)) with ``config``'s state_dict.

    ``expected`` is that state_dict's spec when the caller has it already (for the kinds where
    :func:`spec_needs_torch`, the inspector's answer through :func:`spec_from_json`). Keys tied to
    another parameter may be left out (save_pretrained writes one copy); their shape is checked when
    present. Returns the problems (empty when the weights fit), each naming keys and shapes, so that
    one 422 can list everything that is wrong at once.
    """
    if expected is None:
        expected = state_dict_spec(config)
    problems: list[str] = []
    missing = [k for k, spec in expected.items() if k not in tensors and spec.tied_to is None]
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
