"""``hf``: a Hugging Face transformers model, built from its ``config.json`` by transformers' own classes.

Config: ``{"kind": "hf", "task": "causal_lm" | "sequence_classification" | "masked_lm", "config": {...}}``
where ``config`` is what ``save_pretrained`` writes to ``config.json``. ``task`` defaults to the one the
config's ``architectures`` names (``*ForSequenceClassification``, ``*ForMaskedLM``, ``*ForCausalLM`` /
``*LMHeadModel``), else ``causal_lm`` (``masked_lm`` for bert, whose plain causal LM needs ``is_decoder``).

Safety: only the model types in :data:`ALLOWED_MODEL_TYPES` are built, with the classes of
:data:`TASK_CLASSES` that ship inside transformers. A config that asks for repository code (``auto_map``,
``custom_pipelines``, ``trust_remote_code``) or a quantization backend is refused in :func:`normalize`,
which is plain Python: the API validates configs without importing torch or transformers. The build
never calls ``from_pretrained`` and never passes ``trust_remote_code``; offline mode is switched on
before transformers is imported, so nothing is ever downloaded.

Attention is built "eager": SDPA's fused CPU kernels have no double backward, which the estimator's
curvature pass needs. The model is built in float32 whatever ``dtype`` the config records.

Tied weights (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) appear in the state_dict under
both keys, but ``save_pretrained`` writes only one: the spec marks the other ``tied_to`` the one kept,
and a checkpoint may omit it.

Key names: the spec lists the keys under the names ``save_pretrained`` writes. transformers renames
some on save and back on load (GPT-NeoX's ``lm_head.weight`` is saved as ``embed_out.weight``, the
name Pythia's checkpoints use); :func:`saved_key_names` and :func:`model_key_names` apply
transformers' own renaming tables, so the worker loads both spellings.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from . import fields
from .fields import MAX_DEPTH, MAX_WIDTH, ArchitectureError, TensorSpec

KIND = "hf"
SPEC_NEEDS_TORCH = True  # the spec comes from a meta-device build (see worker/inspect_architecture.py)

ALLOWED_MODEL_TYPES = ("gpt2", "gpt_neox", "llama", "qwen2", "mistral", "bert")
TASKS = ("causal_lm", "sequence_classification", "masked_lm")

# model_type -> task -> the transformers class that builds it (transformers 5.25's
# MODEL_FOR_CAUSAL_LM / SEQUENCE_CLASSIFICATION / MASKED_LM mapping names, written out here so that
# validating a config never imports transformers).
TASK_CLASSES: dict[str, dict[str, str]] = {
    "gpt2": {"causal_lm": "GPT2LMHeadModel", "sequence_classification": "GPT2ForSequenceClassification"},
    "gpt_neox": {"causal_lm": "GPTNeoXForCausalLM", "sequence_classification": "GPTNeoXForSequenceClassification"},
    "llama": {"causal_lm": "LlamaForCausalLM", "sequence_classification": "LlamaForSequenceClassification"},
    "qwen2": {"causal_lm": "Qwen2ForCausalLM", "sequence_classification": "Qwen2ForSequenceClassification"},
    "mistral": {"causal_lm": "MistralForCausalLM", "sequence_classification": "MistralForSequenceClassification"},
    "bert": {
        "masked_lm": "BertForMaskedLM",
        "sequence_classification": "BertForSequenceClassification",
        "causal_lm": "BertLMHeadModel",  # needs "is_decoder": true in the config
    },
}

# Defaults of transformers 5.25 for the two numbers the service checks token datasets against, used
# when config.json leaves them out: (vocab_size, context length).
TOKEN_DEFAULTS: dict[str, tuple[int, int]] = {
    "gpt2": (50257, 1024),
    "gpt_neox": (50432, 2048),
    "llama": (32000, 2048),
    "qwen2": (151936, 32768),
    "mistral": (32000, 131072),
    "bert": (30522, 512),
}
_CONTEXT_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx")

# Keys that would make transformers run code from a repository, or load a backend that is not torch.
CUSTOM_CODE_KEYS = ("auto_map", "custom_pipelines", "trust_remote_code")
REFUSED_KEYS = ("quantization_config",)
# What save_pretrained records about where and how it ran: not part of the architecture.
BOOKKEEPING_KEYS = (
    "_name_or_path", "transformers_version", "_commit_hash", "_attn_implementation_autoset",
    "_attn_implementation_internal", "_attn_implementation",
)

MAX_CONFIG_BYTES = 64 * 1024  # a real config.json is a few KB
# Size fields checked before any build: a clear error for a typo, and a bound on the meta build's time.
_DEPTH_FIELDS = ("n_layer", "num_hidden_layers")
_WIDTH_FIELDS = (
    "n_embd", "hidden_size", "n_inner", "intermediate_size", "n_head", "num_attention_heads",
    "num_key_value_heads", "num_labels",
)
_VOCAB_FIELDS = ("vocab_size", *_CONTEXT_FIELDS)
MAX_VOCAB = 1 << 24

_CLASS_SUFFIX_TASKS = (
    ("ForSequenceClassification", "sequence_classification"),
    ("ForMaskedLM", "masked_lm"),
    ("ForCausalLM", "causal_lm"),
    ("LMHeadModel", "causal_lm"),
)


def _allowed() -> str:
    return ", ".join(ALLOWED_MODEL_TYPES)


def normalize(c: dict[str, Any]) -> dict[str, Any]:
    fields.reject_unknown(c, {"task", "config"})
    config = c.get("config")
    if not isinstance(config, dict):
        raise ArchitectureError(
            "hf: field 'config' is required: the model's config.json as a JSON object (with its 'model_type')"
        )
    try:
        encoded = json.dumps(config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(f"hf: 'config' must be plain JSON: {exc}") from None
    if len(encoded) > MAX_CONFIG_BYTES:
        raise ArchitectureError(f"hf: config is {len(encoded)} bytes of JSON, more than the {MAX_CONFIG_BYTES} accepted")
    custom = [key for key in CUSTOM_CODE_KEYS if key in config]
    if custom:
        raise ArchitectureError(
            f"hf: the config asks for repository code ({', '.join(custom)}), which this service never runs; "
            f"only transformers' built-in classes for the model types {_allowed()} are accepted"
        )
    model_type = config.get("model_type")
    if model_type not in ALLOWED_MODEL_TYPES:
        raise ArchitectureError(
            f"hf: model_type {model_type!r} is not accepted; allowed model types: {_allowed()} "
            "(built with transformers' own classes, never repository code)"
        )
    refused = [key for key in REFUSED_KEYS if config.get(key) is not None]
    if refused:
        raise ArchitectureError(f"hf: {', '.join(refused)} is not supported; upload the unquantized weights")
    _check_sizes(config)
    task = _task(c.get("task"), config, model_type)
    if task == "causal_lm" and model_type == "bert" and config.get("is_decoder") is not True:
        raise ArchitectureError(
            'hf: task causal_lm for bert builds BertLMHeadModel, which needs "is_decoder": true in the config; '
            "for a BERT trained with masked language modelling use task masked_lm"
        )
    kept = {key: value for key, value in config.items() if key not in BOOKKEEPING_KEYS}
    return {"kind": KIND, "task": task, "config": kept}


def _task(task: Any, config: dict[str, Any], model_type: str) -> str:
    supported = TASK_CLASSES[model_type]
    if task is None:
        task = _task_from_architectures(config.get("architectures"))
    if task is None:
        task = "masked_lm" if model_type == "bert" else "causal_lm"
    if task not in TASKS:
        raise ArchitectureError(f"hf: field 'task' must be one of {list(TASKS)}, got {task!r}")
    if task not in supported:
        raise ArchitectureError(
            f"hf: task {task!r} is not available for model_type {model_type!r}; available: {sorted(supported)}"
        )
    return task


def _task_from_architectures(architectures: Any) -> str | None:
    if not isinstance(architectures, list):
        return None
    for name in architectures:
        for suffix, task in _CLASS_SUFFIX_TASKS:
            if isinstance(name, str) and name.endswith(suffix):
                return task
    return None


def _check_sizes(config: dict[str, Any]) -> None:
    bounds = (
        [(f, MAX_DEPTH) for f in _DEPTH_FIELDS]
        + [(f, MAX_WIDTH) for f in _WIDTH_FIELDS]
        + [(f, MAX_VOCAB) for f in _VOCAB_FIELDS]
    )
    for field, maximum in bounds:
        value = config.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArchitectureError(f"hf: config field '{field}' must be an integer, got {value!r}")
        if not 1 <= value <= maximum:
            raise ArchitectureError(f"hf: config field '{field}' must be between 1 and {maximum}, got {value}")


def token_limits(c: dict[str, Any]) -> tuple[int, int]:
    """(vocab_size, context length) of a normalized config: token ids must be below the first, and
    sequences at most the second long."""
    config = c["config"]
    vocab_default, context_default = TOKEN_DEFAULTS[config["model_type"]]
    vocab = config.get("vocab_size", vocab_default)
    context = next((config[f] for f in _CONTEXT_FIELDS if config.get(f) is not None), context_default)
    return vocab, context


def model_class_name(c: dict[str, Any]) -> str:
    return TASK_CLASSES[c["config"]["model_type"]][c["task"]]


# ---------------------------------------------------------------------------------------------
# torch side: imported only by the functions that build.


def _transformers() -> Any:
    """transformers, imported with the hub switched off: a build never downloads anything."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers

    return transformers


def preload() -> None:
    """Import transformers and the modeling classes of every allowlisted type: several seconds in a
    fresh process, worth paying once in a warm job process rather than in each job."""
    transformers = _transformers()
    for classes in TASK_CLASSES.values():
        for name in classes.values():
            getattr(transformers, name)


def build(c: dict[str, Any]) -> Any:
    """The freshly initialised model (float32, eager attention) for a normalized config."""
    import torch

    transformers = _transformers()
    config_class = transformers.CONFIG_MAPPING[c["config"]["model_type"]]
    hf_config = config_class.from_dict(dict(c["config"]))
    model_class = getattr(transformers, model_class_name(c))
    return model_class._from_config(hf_config, attn_implementation="eager", dtype=torch.float32)


def state_dict_spec(c: dict[str, Any]) -> dict[str, TensorSpec]:
    return dict(_cached_spec(json.dumps(c, sort_keys=True)))


@functools.lru_cache(maxsize=64)
def _cached_spec(key: str) -> dict[str, TensorSpec]:
    import torch

    with torch.device("meta"):
        model = build(json.loads(key))
    spec = spec_of_module(model)
    saved = saved_key_names(model, list(spec))
    return {
        saved[key]: TensorSpec(s.shape, s.parameter, s.integer, saved[s.tied_to] if s.tied_to else None)
        for key, s in spec.items()
    }


def _renamings(model: Any, *, reverse: bool) -> list[Any]:
    """transformers' key renamings for ``model``: checkpoint -> model names, or (``reverse``) the
    renamings save_pretrained applies. Only plain renamings exist for the allowlisted types; a tensor
    conversion would mean the checkpoint layout differs from the model's, which this kind refuses."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange, WeightRenaming

    conversions = get_model_conversion_mapping(model, add_legacy=not reverse)
    if reverse:
        conversions = [c.reverse_transform() for c in conversions[::-1] if not isinstance(c, PrefixChange)]
    unsupported = [type(c).__name__ for c in conversions if not isinstance(c, WeightRenaming)]
    if unsupported:
        raise ArchitectureError(f"hf: {type(model).__name__} needs weight conversions ({', '.join(unsupported)}) this kind does not apply")
    return conversions


def saved_key_names(model: Any, keys: list[str]) -> dict[str, str]:
    """model state_dict key -> the name save_pretrained writes it under."""
    from transformers.core_model_loading import apply_renamings

    renamings = _renamings(model, reverse=True)
    return {key: apply_renamings(key, renamings) for key in keys}


def model_key_names(model: Any, keys: list[str]) -> dict[str, str]:
    """checkpoint key -> the model's state_dict key (identity for keys already spelled the model's way)."""
    from transformers.core_model_loading import apply_renamings

    renamings = _renamings(model, reverse=False)
    own = set(model.state_dict())
    return {key: key if key in own else apply_renamings(key, renamings) for key in keys}


def spec_of_module(model: Any) -> dict[str, TensorSpec]:
    """The state_dict spec of a torch module, with ``tied_to`` on the keys that share a parameter with
    an earlier key (the copy ``save_pretrained`` leaves out)."""
    first_name: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            tied[name] = first_name[id(param)]
        else:
            first_name[id(param)] = name
    declared = getattr(model, "_tied_weights_keys", None)
    if isinstance(declared, dict):
        # transformers names which key of a tied pair is the copy; prefer its choice of source.
        for target, source in declared.items():
            if tied.get(source) == target:
                del tied[source]
                tied[target] = source
    parameters = set(first_name.values()) | set(tied)
    spec: dict[str, TensorSpec] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        spec[key] = TensorSpec(
            tuple(tensor.shape), key in parameters, integer=not tensor.is_floating_point(), tied_to=tied.get(key)
        )
    return spec


def infer(model: Any) -> dict[str, Any] | None:
    """The config of a transformers ``PreTrainedModel`` (duck-typed: transformers is not imported for
    any other module); a ValueError for one whose type or class this kind does not build."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None or not any(cls.__name__ == "PreTrainedModel" for cls in type(model).__mro__):
        return None
    class_name = type(model).__name__
    task = next((t for t, name in TASK_CLASSES.get(model_type, {}).items() if name == class_name), None)
    if model_type not in ALLOWED_MODEL_TYPES or task is None:
        supported = ", ".join(name for classes in TASK_CLASSES.values() for name in classes.values())
        raise ValueError(
            f"cannot upload a {class_name} (model_type {model_type!r}) as kind 'hf': the service builds only "
            f"transformers' own classes {supported}"
        )
    # Through JSON: what is stored is what a config.json holds (id2label's integer keys become strings).
    as_json = json.loads(json.dumps(config.to_dict()))
    kept = {k: v for k, v in as_json.items() if k not in BOOKKEEPING_KEYS}
    return {"kind": KIND, "task": task, "config": kept}
