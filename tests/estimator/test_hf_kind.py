"""Architecture kind ``hf``: what it accepts, what it refuses before anything runs, tied weights, the
worker-side inspector, loading a save_pretrained checkpoint, and inferring the config of a model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from estimator.architectures import (
    ArchitectureError,
    build_model,
    check_weights,
    infer_architecture,
    normalize,
    spec_from_json,
    spec_needs_torch,
    state_dict_spec,
    token_limits,
)
from estimator.architectures.hf import ALLOWED_MODEL_TYPES, MAX_CONFIG_BYTES, TASK_CLASSES
from tests.service.test_architectures import HF_CONFIGS
from worker.inspect_architecture import spec_of
from worker.loading import load_model

ROOT = Path(__file__).resolve().parents[2]
GPT2 = {"kind": "hf", "config": HF_CONFIGS["gpt2"]}
BERT = {"kind": "hf", "config": HF_CONFIGS["bert"]}


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in state.items()}


def _run_python(code: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


# ---------------------------------------------------------------------------------------------
# normalize: plain Python


def test_task_defaults_and_inference_from_architectures():
    assert normalize(GPT2)["task"] == "causal_lm"
    assert normalize(BERT)["task"] == "masked_lm"
    classified = {**HF_CONFIGS["llama"], "architectures": ["LlamaForSequenceClassification"]}
    assert normalize({"kind": "hf", "config": classified})["task"] == "sequence_classification"
    masked = {**HF_CONFIGS["bert"], "architectures": ["BertForMaskedLM"]}
    assert normalize({"kind": "hf", "config": masked})["task"] == "masked_lm"
    assert normalize({"kind": "hf", "task": "causal_lm", "config": {**HF_CONFIGS["gpt2"], "architectures": ["GPT2LMHeadModel"]}})["task"] == "causal_lm"


def test_bookkeeping_keys_are_dropped_and_normalize_is_idempotent():
    config = {**HF_CONFIGS["gpt2"], "_name_or_path": "/home/me/run", "transformers_version": "5.25.0"}
    normalized = normalize({"kind": "hf", "config": config})
    assert "_name_or_path" not in normalized["config"] and "transformers_version" not in normalized["config"]
    assert normalize(normalized) == normalized
    assert spec_needs_torch(normalized)
    assert not spec_needs_torch(normalize({"kind": "mlp", "in_features": 2, "out_features": 1}))


def test_token_limits():
    assert token_limits(normalize(GPT2)) == (96, 16)
    assert token_limits(normalize({"kind": "hf", "config": {"model_type": "gpt2"}})) == (50257, 1024)
    assert token_limits(normalize(BERT)) == (96, 16)
    assert token_limits({"kind": "transformer", "vocab_size": 11, "context_length": 8}) == (11, 8)
    assert token_limits(normalize({"kind": "mlp", "in_features": 2, "out_features": 1})) is None


REFUSALS = [
    ({"kind": "hf", "config": {**HF_CONFIGS["gpt2"], "auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}}},
     "repository code (auto_map)"),
    ({"kind": "hf", "config": {**HF_CONFIGS["gpt2"], "trust_remote_code": True}}, "repository code (trust_remote_code)"),
    ({"kind": "hf", "config": {**HF_CONFIGS["gpt2"], "model_type": "evil"}}, "model_type 'evil' is not accepted"),
    ({"kind": "hf", "config": {"vocab_size": 10}}, "model_type None is not accepted"),
    ({"kind": "hf", "task": "translation", "config": HF_CONFIGS["gpt2"]}, "field 'task' must be one of"),
    ({"kind": "hf", "task": "masked_lm", "config": HF_CONFIGS["gpt2"]}, "not available for model_type 'gpt2'"),
    ({"kind": "hf", "task": "causal_lm", "config": HF_CONFIGS["bert"]}, '"is_decoder": true'),
    ({"kind": "hf", "config": {**HF_CONFIGS["gpt2"], "padding": "x" * MAX_CONFIG_BYTES}}, "more than the"),
    ({"kind": "hf", "config": {**HF_CONFIGS["gpt2"], "n_layer": 10**6}}, "'n_layer' must be between"),
    ({"kind": "hf", "config": {**HF_CONFIGS["gpt2"], "vocab_size": "64"}}, "'vocab_size' must be an integer"),
    ({"kind": "hf", "config": {**HF_CONFIGS["gpt2"], "quantization_config": {"quant_method": "bitsandbytes"}}},
     "quantization_config is not supported"),
    ({"kind": "hf"}, "field 'config' is required"),
    ({"kind": "hf", "config": HF_CONFIGS["gpt2"], "revision": "main"}, "unknown field(s) ['revision']"),
]


@pytest.mark.parametrize(("architecture", "message"), REFUSALS, ids=[m for _, m in REFUSALS])
def test_refusals_name_the_problem(architecture, message):
    with pytest.raises(ArchitectureError) as err:
        normalize(architecture)
    assert message in str(err.value)


def test_custom_code_refusal_lists_the_allowed_types():
    with pytest.raises(ArchitectureError) as err:
        normalize(REFUSALS[0][0])
    assert all(model_type in str(err.value) for model_type in ALLOWED_MODEL_TYPES)
    with pytest.raises(ArchitectureError) as err:
        normalize(REFUSALS[2][0])
    assert all(model_type in str(err.value) for model_type in ALLOWED_MODEL_TYPES)


def test_refusals_happen_before_torch_or_transformers_is_imported():
    """Proof that nothing ran: a fresh interpreter refuses every bad config, and afterwards neither
    torch nor transformers has been imported (normalize is plain Python)."""
    code = (
        "import json, sys\n"
        "from estimator.architectures import ArchitectureError, normalize\n"
        "refused = 0\n"
        "for config in json.load(sys.stdin):\n"
        "    try:\n"
        "        normalize(config)\n"
        "    except ArchitectureError:\n"
        "        refused += 1\n"
        "normalize(" + repr(GPT2) + ")\n"
        "print(json.dumps([refused, 'torch' in sys.modules, 'transformers' in sys.modules]))\n"
    )
    result = _run_python(code, json.dumps([config for config, _ in REFUSALS]))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [len(REFUSALS), False, False]


def test_the_task_table_matches_transformers():
    from transformers.models.auto import modeling_auto

    mappings = {
        "causal_lm": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "sequence_classification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "masked_lm": modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    }
    for model_type in ALLOWED_MODEL_TYPES:
        for task, class_name in TASK_CLASSES[model_type].items():
            assert mappings[task].get(model_type) == class_name, (model_type, task)


# ---------------------------------------------------------------------------------------------
# Builds, tied weights, the inspector


def test_build_is_eager_float32_even_when_the_config_says_otherwise():
    model = build_model({"kind": "hf", "config": {**HF_CONFIGS["llama"], "dtype": "float16", "attn_implementation": "sdpa"}})
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("model_type", sorted(HF_CONFIGS))
def test_spec_is_what_save_pretrained_writes_plus_tied_keys(model_type, tmp_path):
    """Including transformers' renames on save (GPT-NeoX's lm_head.weight is written as embed_out.weight)."""
    from safetensors import safe_open

    architecture = {"kind": "hf", "config": HF_CONFIGS[model_type]}
    model = build_model(architecture)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = {key: (tuple(f.get_slice(key).get_shape()), "float32") for key in f.keys()}  # noqa: SIM118
    spec = state_dict_spec(normalize(architecture))
    assert {key for key, s in spec.items() if s.tied_to} == set(spec) - set(saved)
    assert check_weights(normalize(architecture), saved) == []
    if model_type in ("gpt2", "bert"):
        assert check_weights(normalize(architecture), _tensors(model.state_dict())) == []  # both copies: fine too
        # A tied key present with a wrong shape is still reported.
        tied_key = next(key for key, s in spec.items() if s.tied_to)
        wrong = {**saved, tied_key: ((1, 1), "float32")}
        assert any(tied_key in problem for problem in check_weights(normalize(architecture), wrong))
    if model_type == "gpt_neox":
        assert "embed_out.weight" in spec and "lm_head.weight" not in spec


def test_load_model_accepts_the_module_own_key_names(tmp_path):
    """A GPT-NeoX state_dict saved with safetensors directly says lm_head.weight, not embed_out.weight."""
    from safetensors.torch import save_file

    architecture = {"kind": "hf", "config": HF_CONFIGS["gpt_neox"]}
    model = build_model(architecture).eval()
    save_file(dict(model.state_dict()), tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors", "safetensors", architecture)
    tokens = torch.randint(1, 96, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)


def test_num_params_counts_tied_weights_once():
    from estimator.architectures import num_params

    model = build_model(GPT2)
    assert num_params(normalize(GPT2)) == sum(p.numel() for p in model.parameters())


def test_inspector_command_and_spec_of_agree_with_the_registry():
    normalized = normalize(GPT2)
    answer = spec_of(normalized)
    assert answer["ok"] and answer["num_params"] == sum(p.numel() for p in build_model(GPT2).parameters())
    assert spec_from_json(answer["spec"]) == state_dict_spec(normalized)
    process = subprocess.run(
        [sys.executable, "-m", "worker.inspect_architecture"], input=json.dumps(normalized),
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout) == json.loads(json.dumps(answer))


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (json.dumps(REFUSALS[0][0]), "repository code"),
        (json.dumps({"kind": "hf", "config": {**HF_CONFIGS["gpt2"], "n_embd": 30}}), "cannot be built"),
        ("{not json", "not valid JSON"),
    ],
)
def test_inspector_refusals(stdin, message):
    process = subprocess.run(
        [sys.executable, "-m", "worker.inspect_architecture"], input=stdin,
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )
    assert process.returncode == 2
    answer = json.loads(process.stdout)
    assert answer["ok"] is False and message in answer["error"]


# ---------------------------------------------------------------------------------------------
# Loading in the worker, inference in the SDK


@pytest.mark.parametrize("model_type", sorted(HF_CONFIGS))
def test_load_model_reads_save_pretrained_output(model_type, tmp_path):
    architecture = {"kind": "hf", "config": HF_CONFIGS[model_type]}
    torch.manual_seed(3)
    model = build_model(architecture).eval()
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path / "model.safetensors", "safetensors", architecture)
    tokens = torch.randint(1, 96, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)
    assert loaded.config._attn_implementation == "eager"
    for key, spec in state_dict_spec(normalize(architecture)).items():
        if spec.tied_to:
            assert loaded.get_parameter(key) is loaded.get_parameter(spec.tied_to)


def test_load_model_names_missing_and_unexpected_keys(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in build_model(GPT2).state_dict().items() if k != "lm_head.weight"}
    state.pop("transformer.h.0.ln_1.bias")
    state["transformer.h.9.extra"] = torch.zeros(1)
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"missing keys: transformer\.h\.0\.ln_1\.bias; unexpected keys: transformer\.h\.9\.extra"):
        load_model(tmp_path / "w.safetensors", "safetensors", GPT2)


def test_load_model_refuses_tied_keys_that_differ(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in build_model(GPT2).state_dict().items()}
    state["lm_head.weight"] += 1.0
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        load_model(tmp_path / "w.safetensors", "safetensors", GPT2)


@pytest.mark.parametrize("task", ["causal_lm", "sequence_classification"])
def test_infer_architecture_of_a_pretrained_model(task):
    config = {**HF_CONFIGS["gpt2"], "pad_token_id": 0}
    model = build_model({"kind": "hf", "task": task, "config": config})
    inferred = infer_architecture(model)
    assert inferred["kind"] == "hf" and inferred["task"] == task
    assert normalize(inferred) == inferred
    assert state_dict_spec(inferred) == state_dict_spec(normalize({"kind": "hf", "task": task, "config": config}))


def test_infer_architecture_refuses_a_base_model_class():
    import transformers

    base = transformers.GPT2Model(transformers.GPT2Config(**{k: v for k, v in HF_CONFIGS["gpt2"].items() if k != "model_type"}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        infer_architecture(base)
