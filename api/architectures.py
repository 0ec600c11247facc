"""Built-in architectures, in pure Python: validate a JSON config, and say which state_dict it has.

A safetensors or ``.pt`` checkpoint is only weights; the service rebuilds the network from an
``architecture`` config such as ``{"kind": "mlp", "in_features": 16, "hidden": [32], "out_features": 3}``.
This module knows, without torch, exactly which state_dict keys and shapes each config's natural
``torch.nn`` construction has (``worker/architectures.py`` builds that module; a test checks that the
two agree for many configs), so an upload can be checked before it is stored.

Configs (defaults in brackets; every size a positive integer):

- ``mlp``: ``in_features``, ``hidden`` (list, may be empty), ``out_features``, ``activation`` [relu],
  ``bias`` [true]. ``nn.Sequential(Linear, Act, Linear, Act, ..., Linear)``: keys ``0.weight``,
  ``0.bias``, ``2.weight``, ... Input ``[batch, in_features]``, output ``[batch, out_features]``.
- ``dln`` (deep linear network): ``widths`` (at least two). ``nn.Sequential`` of bias-free
  ``Linear(widths[i], widths[i+1])``: keys ``0.weight``, ``1.weight``, ...
- ``cnn``: ``in_channels``, ``image_size`` (int or ``[height, width]``), ``channels`` (list, one conv
  block each), ``kernel_size`` [3, odd], ``pool`` [true], ``hidden`` [[]], ``num_classes``,
  ``activation`` [relu]. ``nn.Sequential``: per block ``Conv2d(c_in, c, k, padding=k//2)``, Act and
  (if ``pool``) ``MaxPool2d(2)``; then ``Flatten``; then ``Linear``/Act per hidden width; then
  ``Linear(.., num_classes)``. Input ``[batch, in_channels, height, width]``.
- ``resnet`` (small, CIFAR-style): ``in_channels`` [3], ``num_classes``, ``width`` [16], ``blocks``
  [[2, 2]] (basic blocks per stage; stage s has ``width * 2**s`` channels, stride 2 from the second
  stage on), ``norm`` ["batch"] or "none". Modules ``stem`` (conv, norm, ReLU), ``stages.{s}.{b}``
  (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``shortcut``), global average pooling, ``fc``. Any image size.
  With batch norm the state_dict also holds the ``running_mean``/``running_var``/``num_batches_tracked``
  buffers (they are not parameters).
- ``transformer`` (small decoder-only LM): ``vocab_size``, ``context_length``, ``d_model``,
  ``n_layers``, ``n_heads`` (divides d_model), ``d_ff`` [4 * d_model]. Modules ``token_embedding``,
  ``position_embedding``, ``blocks.{i}`` (``ln1``, ``attn.qkv``, ``attn.proj``, ``ln2``, ``mlp.0``,
  ``mlp.2``; pre-norm, GELU MLP, causal self-attention), ``ln_f``, ``lm_head`` (no bias, not tied).
  Input token ids ``[batch, seq]`` (seq <= context_length), output logits ``[batch, seq, vocab_size]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "silu", "identity")
KINDS = ("mlp", "dln", "cnn", "resnet", "transformer")

# Generous bounds: they exist to give a clear error for a typo like 10**9 before any arithmetic.
MAX_WIDTH = 1 << 20
MAX_DEPTH = 512
MAX_PARAMS = 1 << 36


class ArchitectureError(ValueError):
    """The architecture config is invalid; the message names the field and what is expected."""


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    parameter: bool  # False for buffers (e.g. batch-norm running statistics)
    integer: bool = False  # True for integer buffers (num_batches_tracked)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# ---------------------------------------------------------------------------------------------
# Config validation


def _int(config: dict[str, Any], field: str, *, default: Any = ..., minimum: int = 1, maximum: int = MAX_WIDTH) -> int:
    value = config.get(field, default)
    if value is ...:
        raise ArchitectureError(f"{config.get('kind')}: field '{field}' is required (an integer >= {minimum})")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchitectureError(f"{config.get('kind')}: field '{field}' must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ArchitectureError(f"{config.get('kind')}: field '{field}' must be between {minimum} and {maximum}, got {value}")
    return value


def _int_list(config: dict[str, Any], field: str, *, default: Any = ..., min_len: int = 0, minimum: int = 1) -> list[int]:
    value = config.get(field, default)
    kind = config.get("kind")
    if value is ...:
        raise ArchitectureError(f"{kind}: field '{field}' is required (a list of integers)")
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ArchitectureError(f"{kind}: field '{field}' must be a list of integers, got {value!r}")
    if len(value) < min_len or len(value) > MAX_DEPTH:
        raise ArchitectureError(f"{kind}: field '{field}' must have between {min_len} and {MAX_DEPTH} entries, got {len(value)}")
    for v in value:
        if not minimum <= v <= MAX_WIDTH:
            raise ArchitectureError(f"{kind}: every entry of '{field}' must be between {minimum} and {MAX_WIDTH}, got {v}")
    return list(value)


def _choice(config: dict[str, Any], field: str, choices: tuple[str, ...], default: str) -> str:
    value = config.get(field, default)
    if value not in choices:
        raise ArchitectureError(f"{config.get('kind')}: field '{field}' must be one of {list(choices)}, got {value!r}")
    return value


def _bool(config: dict[str, Any], field: str, default: bool) -> bool:
    value = config.get(field, default)
    if not isinstance(value, bool):
        raise ArchitectureError(f"{config.get('kind')}: field '{field}' must be true or false, got {value!r}")
    return value


def _reject_unknown(config: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(config) - known - {"kind"})
    if unknown:
        raise ArchitectureError(
            f"{config.get('kind')}: unknown field(s) {unknown}; known fields: {sorted(known)}"
        )


def normalize(config: Any) -> dict[str, Any]:
    """Validate ``config`` and return it with every default filled in (what is stored and built)."""
    if not isinstance(config, dict):
        raise ArchitectureError(f"architecture must be a JSON object with a 'kind' field, got {type(config).__name__}")
    kind = config.get("kind")
    if kind not in KINDS:
        raise ArchitectureError(f"architecture 'kind' must be one of {list(KINDS)}, got {kind!r}")
    normalized = _NORMALIZERS[kind](config)
    total = sum(spec.numel for spec in _SPECS[kind](normalized).values() if spec.parameter)
    if total > MAX_PARAMS:
        raise ArchitectureError(f"{kind}: {total} parameters is more than this service accepts ({MAX_PARAMS})")
    return normalized


def _normalize_mlp(c: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(c, {"in_features", "hidden", "out_features", "activation", "bias"})
    return {
        "kind": "mlp",
        "in_features": _int(c, "in_features"),
        "hidden": _int_list(c, "hidden", default=[]),
        "out_features": _int(c, "out_features"),
        "activation": _choice(c, "activation", ACTIVATIONS, "relu"),
        "bias": _bool(c, "bias", True),
    }


def _normalize_dln(c: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(c, {"widths"})
    return {"kind": "dln", "widths": _int_list(c, "widths", min_len=2)}


def _image_size(c: dict[str, Any]) -> list[int]:
    value = c.get("image_size", ...)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not (isinstance(value, list) and len(value) == 2):
        raise ArchitectureError(f"cnn: field 'image_size' must be an integer or [height, width], got {value!r}")
    return _int_list({"kind": "cnn", "image_size": value}, "image_size", min_len=2)


def _normalize_cnn(c: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(c, {"in_channels", "image_size", "channels", "kernel_size", "pool", "hidden", "num_classes", "activation"})
    out = {
        "kind": "cnn",
        "in_channels": _int(c, "in_channels"),
        "image_size": _image_size(c),
        "channels": _int_list(c, "channels", min_len=1),
        "kernel_size": _int(c, "kernel_size", default=3, maximum=31),
        "pool": _bool(c, "pool", True),
        "hidden": _int_list(c, "hidden", default=[]),
        "num_classes": _int(c, "num_classes"),
        "activation": _choice(c, "activation", ACTIVATIONS, "relu"),
    }
    if out["kernel_size"] % 2 == 0:
        raise ArchitectureError(f"cnn: field 'kernel_size' must be odd (padding keeps the image size), got {out['kernel_size']}")
    height, width = _cnn_feature_map(out)
    if height < 1 or width < 1:
        raise ArchitectureError(
            f"cnn: image_size {out['image_size']} is too small for {len(out['channels'])} pooling blocks "
            "(each halves it); use fewer channels entries or pool: false"
        )
    return out


def _normalize_resnet(c: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(c, {"in_channels", "num_classes", "width", "blocks", "norm"})
    return {
        "kind": "resnet",
        "in_channels": _int(c, "in_channels", default=3),
        "num_classes": _int(c, "num_classes"),
        "width": _int(c, "width", default=16, maximum=4096),
        "blocks": _int_list(c, "blocks", default=[2, 2], min_len=1),
        "norm": _choice(c, "norm", ("batch", "none"), "batch"),
    }


def _normalize_transformer(c: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown(c, {"vocab_size", "context_length", "d_model", "n_layers", "n_heads", "d_ff"})
    out = {
        "kind": "transformer",
        "vocab_size": _int(c, "vocab_size"),
        "context_length": _int(c, "context_length"),
        "d_model": _int(c, "d_model"),
        "n_layers": _int(c, "n_layers", maximum=MAX_DEPTH),
        "n_heads": _int(c, "n_heads", maximum=4096),
    }
    out["d_ff"] = _int(c, "d_ff", default=4 * out["d_model"])
    if out["d_model"] % out["n_heads"]:
        raise ArchitectureError(f"transformer: d_model ({out['d_model']}) must be divisible by n_heads ({out['n_heads']})")
    return out


# ---------------------------------------------------------------------------------------------
# state_dict specs: key -> shape, in the order torch's state_dict lists them


def state_dict_spec(config: dict[str, Any]) -> dict[str, TensorSpec]:
    """The state_dict of the module ``config`` builds (``config`` as returned by :func:`normalize`)."""
    return _SPECS[config["kind"]](config)


def num_params(config: dict[str, Any]) -> int:
    return sum(spec.numel for spec in state_dict_spec(config).values() if spec.parameter)


def _linear(spec: dict[str, TensorSpec], prefix: str, fan_in: int, fan_out: int, bias: bool = True) -> None:
    spec[f"{prefix}weight"] = TensorSpec((fan_out, fan_in), True)
    if bias:
        spec[f"{prefix}bias"] = TensorSpec((fan_out,), True)


def _conv(spec: dict[str, TensorSpec], prefix: str, c_in: int, c_out: int, k: int, bias: bool) -> None:
    spec[f"{prefix}weight"] = TensorSpec((c_out, c_in, k, k), True)
    if bias:
        spec[f"{prefix}bias"] = TensorSpec((c_out,), True)


def _batch_norm(spec: dict[str, TensorSpec], prefix: str, channels: int) -> None:
    spec[f"{prefix}weight"] = TensorSpec((channels,), True)
    spec[f"{prefix}bias"] = TensorSpec((channels,), True)
    spec[f"{prefix}running_mean"] = TensorSpec((channels,), False)
    spec[f"{prefix}running_var"] = TensorSpec((channels,), False)
    spec[f"{prefix}num_batches_tracked"] = TensorSpec((), False, integer=True)


def _layer_norm(spec: dict[str, TensorSpec], prefix: str, d: int) -> None:
    spec[f"{prefix}weight"] = TensorSpec((d,), True)
    spec[f"{prefix}bias"] = TensorSpec((d,), True)


def _spec_mlp(c: dict[str, Any]) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    widths = [c["in_features"], *c["hidden"], c["out_features"]]
    for i in range(len(widths) - 1):
        # Linear at even indices, activation modules (no parameters) at odd ones.
        _linear(spec, f"{2 * i}.", widths[i], widths[i + 1], c["bias"])
    return spec


def _spec_dln(c: dict[str, Any]) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    widths = c["widths"]
    for i in range(len(widths) - 1):
        _linear(spec, f"{i}.", widths[i], widths[i + 1], bias=False)
    return spec


def _cnn_feature_map(c: dict[str, Any]) -> tuple[int, int]:
    height, width = c["image_size"]
    if c["pool"]:
        for _ in c["channels"]:
            height, width = height // 2, width // 2
    return height, width


def _spec_cnn(c: dict[str, Any]) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    index = 0
    c_in = c["in_channels"]
    for c_out in c["channels"]:
        _conv(spec, f"{index}.", c_in, c_out, c["kernel_size"], bias=True)
        index += 3 if c["pool"] else 2  # conv, activation[, pool]
        c_in = c_out
    index += 1  # Flatten
    height, width = _cnn_feature_map(c)
    widths = [c_in * height * width, *c["hidden"], c["num_classes"]]
    for i in range(len(widths) - 1):
        _linear(spec, f"{index}.", widths[i], widths[i + 1])
        index += 2
    return spec


def _spec_resnet(c: dict[str, Any]) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    batch_norm = c["norm"] == "batch"
    width = c["width"]
    _conv(spec, "stem.0.", c["in_channels"], width, 3, bias=not batch_norm)
    if batch_norm:
        _batch_norm(spec, "stem.1.", width)
    c_in = width
    for s, num_blocks in enumerate(c["blocks"]):
        c_out = width * 2**s
        for b in range(num_blocks):
            stride = 2 if (s > 0 and b == 0) else 1
            prefix = f"stages.{s}.{b}."
            _conv(spec, prefix + "conv1.", c_in, c_out, 3, bias=not batch_norm)
            if batch_norm:
                _batch_norm(spec, prefix + "bn1.", c_out)
            _conv(spec, prefix + "conv2.", c_out, c_out, 3, bias=not batch_norm)
            if batch_norm:
                _batch_norm(spec, prefix + "bn2.", c_out)
            if stride != 1 or c_in != c_out:
                _conv(spec, prefix + "shortcut.0.", c_in, c_out, 1, bias=not batch_norm)
                if batch_norm:
                    _batch_norm(spec, prefix + "shortcut.1.", c_out)
            c_in = c_out
    _linear(spec, "fc.", c_in, c["num_classes"])
    return spec


def _spec_transformer(c: dict[str, Any]) -> dict[str, TensorSpec]:
    spec: dict[str, TensorSpec] = {}
    d, v = c["d_model"], c["vocab_size"]
    spec["token_embedding.weight"] = TensorSpec((v, d), True)
    spec["position_embedding.weight"] = TensorSpec((c["context_length"], d), True)
    for i in range(c["n_layers"]):
        prefix = f"blocks.{i}."
        _layer_norm(spec, prefix + "ln1.", d)
        _linear(spec, prefix + "attn.qkv.", d, 3 * d)
        _linear(spec, prefix + "attn.proj.", d, d)
        _layer_norm(spec, prefix + "ln2.", d)
        _linear(spec, prefix + "mlp.0.", d, c["d_ff"])
        _linear(spec, prefix + "mlp.2.", c["d_ff"], d)
    _layer_norm(spec, "ln_f.", d)
    _linear(spec, "lm_head.", d, v, bias=False)
    return spec


_NORMALIZERS = {
    "mlp": _normalize_mlp,
    "dln": _normalize_dln,
    "cnn": _normalize_cnn,
    "resnet": _normalize_resnet,
    "transformer": _normalize_transformer,
}
_SPECS = {
    "mlp": _spec_mlp,
    "dln": _spec_dln,
    "cnn": _spec_cnn,
    "resnet": _spec_resnet,
    "transformer": _spec_transformer,
}


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
