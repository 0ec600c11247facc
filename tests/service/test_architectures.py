"""The architecture registry: each kind's state_dict spec agrees with the module it builds.

The plain-Python kinds compute their spec without torch; ``hf`` builds on the meta device. Kind
``torchvision`` is checked in tests/vision (it needs the torchvision build for the installed torch).
"""

from __future__ import annotations

import pytest
import torch

from estimator.architectures import (
    KINDS,
    ArchitectureError,
    build_model,
    check_weights,
    normalize,
    num_params,
    state_dict_spec,
)

CONFIGS = [
    {"kind": "mlp", "in_features": 16, "hidden": [32], "out_features": 3, "activation": "relu"},
    {"kind": "mlp", "in_features": 3, "hidden": [], "out_features": 1},
    {"kind": "mlp", "in_features": 5, "hidden": [7, 6, 4], "out_features": 2, "activation": "tanh", "bias": False},
    {"kind": "mlp", "in_features": 2, "hidden": [3, 3], "out_features": 2, "activation": "gelu"},
    {"kind": "dln", "widths": [4, 4]},
    {"kind": "dln", "widths": [5, 3, 7, 2]},
    {"kind": "cnn", "in_channels": 1, "image_size": 8, "channels": [4], "num_classes": 10},
    {"kind": "cnn", "in_channels": 3, "image_size": [12, 8], "channels": [4, 6], "kernel_size": 5, "hidden": [16],
     "num_classes": 5, "activation": "silu"},
    {"kind": "cnn", "in_channels": 2, "image_size": 5, "channels": [3, 3, 3], "pool": False, "hidden": [8, 4],
     "num_classes": 2, "kernel_size": 1},
    {"kind": "resnet", "num_classes": 10},
    {"kind": "resnet", "in_channels": 1, "num_classes": 3, "width": 4, "blocks": [1, 1, 1], "norm": "none"},
    {"kind": "resnet", "in_channels": 3, "num_classes": 2, "width": 8, "blocks": [3], "norm": "batch"},
    {"kind": "transformer", "vocab_size": 11, "context_length": 8, "d_model": 16, "n_layers": 2, "n_heads": 4},
    {"kind": "transformer", "vocab_size": 5, "context_length": 3, "d_model": 6, "n_layers": 1, "n_heads": 3, "d_ff": 10},
    {"kind": "transformer", "vocab_size": 7, "context_length": 4, "d_model": 8, "n_layers": 3, "n_heads": 1},
]

# Tiny configs of every allowlisted Hugging Face model type (tests/estimator/test_hf_kind.py has more).
_TINY = {"vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64, "max_position_embeddings": 16}
HF_CONFIGS = {
    "gpt2": {"model_type": "gpt2", "vocab_size": 96, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 16},
    "gpt_neox": {**_TINY, "model_type": "gpt_neox"},
    "llama": {**_TINY, "model_type": "llama", "num_key_value_heads": 2},
    "qwen2": {**_TINY, "model_type": "qwen2", "num_key_value_heads": 2},
    "mistral": {**_TINY, "model_type": "mistral", "num_key_value_heads": 2},
    "bert": {**_TINY, "model_type": "bert"},
}
CONFIGS += [{"kind": "hf", "config": config} for config in HF_CONFIGS.values()]
CONFIGS += [
    {"kind": "hf", "task": "sequence_classification", "config": {**HF_CONFIGS["gpt2"], "pad_token_id": 0, "num_labels": 3}},
    {"kind": "hf", "task": "sequence_classification", "config": {**HF_CONFIGS["llama"], "pad_token_id": 0}},
    {"kind": "hf", "task": "sequence_classification", "config": HF_CONFIGS["bert"]},
    {"kind": "hf", "task": "causal_lm", "config": {**HF_CONFIGS["bert"], "is_decoder": True}},
    {"kind": "hf", "config": {**HF_CONFIGS["llama"], "tie_word_embeddings": True}},
]


def _example_input(config: dict) -> torch.Tensor:
    if config["kind"] == "mlp":
        return torch.randn(2, config["in_features"])
    if config["kind"] == "dln":
        return torch.randn(2, config["widths"][0])
    if config["kind"] == "cnn":
        return torch.randn(2, config["in_channels"], *normalize(config)["image_size"])
    if config["kind"] == "resnet":
        return torch.randn(2, normalize(config)["in_channels"], 9, 9)
    if config["kind"] == "hf":
        return torch.randint(1, config["config"]["vocab_size"], (2, 8))
    return torch.randint(0, config["vocab_size"], (2, config["context_length"]))


def _expected_output_shape(config: dict) -> tuple[int, ...]:
    c = normalize(config)
    if c["kind"] == "hf":
        if c["task"] == "sequence_classification":
            return (2, c["config"].get("num_labels", 2))
        return (2, 8, c["config"]["vocab_size"])
    return {
        "mlp": lambda: (2, c.get("out_features")),
        "dln": lambda: (2, c["widths"][-1]),
        "cnn": lambda: (2, c.get("num_classes")),
        "resnet": lambda: (2, c.get("num_classes")),
        "transformer": lambda: (2, c.get("context_length"), c.get("vocab_size")),
    }[c["kind"]]()


def test_every_registered_kind_is_checked_here():
    assert {config["kind"] for config in CONFIGS} | {"torchvision"} == set(KINDS)  # torchvision: tests/vision
    from estimator.architectures.hf import ALLOWED_MODEL_TYPES

    assert {config["config"]["model_type"] for config in CONFIGS if config["kind"] == "hf"} == set(ALLOWED_MODEL_TYPES)


def test_every_kind_has_the_registry_functions():
    from estimator.architectures import _KINDS

    for name, kind in _KINDS.items():
        assert kind.KIND == name
        assert all(callable(getattr(kind, f, None)) for f in ("normalize", "state_dict_spec", "build")), name


def test_modules_of_one_kind_share_their_classes():
    """The estimator's graph cache keys models by module class: two builds must use the same classes."""
    config = {"kind": "transformer", "vocab_size": 5, "context_length": 3, "d_model": 4, "n_layers": 1, "n_heads": 2}
    first, second = build_model(config), build_model(config)
    assert [type(m) for m in first.modules()] == [type(m) for m in second.modules()]


def _config_id(config: dict) -> str:
    if config["kind"] == "hf":
        return f"hf-{config['config']['model_type']}-{config.get('task', 'default')}"
    return config["kind"]


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_state_dict_spec_matches_the_torch_module(config):
    torch.manual_seed(0)
    model = build_model(config)
    spec = state_dict_spec(normalize(config))
    state = model.state_dict()
    parameter_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    if config["kind"] == "hf":  # the spec names keys as save_pretrained writes them
        from estimator.architectures.hf import saved_key_names

        saved = saved_key_names(model, list(state))
        state = {saved[key]: tensor for key, tensor in state.items()}
        parameter_names = {saved[name] for name in parameter_names}
    assert list(spec) == list(state), "keys (and their order) differ"
    for key, tensor in state.items():
        assert spec[key].shape == tuple(tensor.shape), key
        assert spec[key].parameter == (key in parameter_names), key
        assert spec[key].integer == (not tensor.is_floating_point()), key
    assert num_params(normalize(config)) == sum(p.numel() for p in model.parameters())
    assert check_weights(normalize(config), {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in state.items()}) == []
    with torch.no_grad():
        out = model.eval()(_example_input(config))
    if config["kind"] == "hf":
        out = out.logits
    assert tuple(out.shape) == _expected_output_shape(config)


def test_mlp_is_the_natural_sequential():
    """A state_dict saved from a user's own nn.Sequential loads into the built model unchanged."""
    torch.manual_seed(1)
    mine = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    built = build_model({"kind": "mlp", "in_features": 16, "hidden": [32], "out_features": 3, "activation": "relu"})
    assert list(built.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    built.load_state_dict(mine.state_dict(), strict=True)
    x = torch.randn(5, 16)
    assert torch.equal(built(x), mine(x))


def test_transformer_is_causal():
    torch.manual_seed(2)
    model = build_model({"kind": "transformer", "vocab_size": 9, "context_length": 6, "d_model": 8, "n_layers": 2, "n_heads": 2}).eval()
    tokens = torch.randint(0, 9, (1, 6))
    changed = tokens.clone()
    changed[0, 4:] = (changed[0, 4:] + 1) % 9
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-6)  # earlier positions never see later tokens
    assert not torch.allclose(a[0, 4:], b[0, 4:])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([1, 2], "JSON object"),
        ({"in_features": 3}, "'kind' must be one of"),
        ({"kind": "vit"}, "'kind' must be one of"),
        ({"kind": "mlp", "hidden": [4], "out_features": 2}, "'in_features' is required"),
        ({"kind": "mlp", "in_features": 0, "out_features": 2}, "'in_features' must be between 1"),
        ({"kind": "mlp", "in_features": 2.5, "out_features": 2}, "'in_features' must be an integer"),
        ({"kind": "mlp", "in_features": True, "out_features": 2}, "'in_features' must be an integer"),
        ({"kind": "mlp", "in_features": 2, "hidden": "32", "out_features": 2}, "'hidden' must be a list"),
        ({"kind": "mlp", "in_features": 2, "out_features": 2, "activation": "swish"}, "'activation' must be one of"),
        ({"kind": "mlp", "in_features": 2, "out_features": 2, "dropout": 0.1}, "unknown field(s) ['dropout']"),
        ({"kind": "dln", "widths": [3]}, "'widths' must have between 2"),
        ({"kind": "cnn", "in_channels": 1, "image_size": 8, "channels": [4], "num_classes": 2, "kernel_size": 4}, "must be odd"),
        ({"kind": "cnn", "in_channels": 1, "image_size": 4, "channels": [2, 2, 2], "num_classes": 2}, "too small"),
        ({"kind": "cnn", "in_channels": 1, "image_size": [4, 4, 4], "channels": [2], "num_classes": 2}, "[height, width]"),
        ({"kind": "resnet", "num_classes": 2, "norm": "layer"}, "'norm' must be one of"),
        ({"kind": "transformer", "vocab_size": 5, "context_length": 4, "d_model": 10, "n_layers": 1, "n_heads": 3}, "divisible"),
        ({"kind": "mlp", "in_features": 1 << 20, "hidden": [1 << 20, 1 << 20], "out_features": 2}, "more than this service accepts"),
    ],
)
def test_invalid_configs_are_refused_with_a_message_naming_the_field(config, message):
    with pytest.raises(ArchitectureError) as err:
        normalize(config)
    assert message in str(err.value)


def test_check_weights_names_every_problem():
    config = normalize({"kind": "mlp", "in_features": 4, "hidden": [8], "out_features": 3})
    tensors = {
        "0.weight": ((8, 5), "float32"),  # wrong shape
        "2.weight": ((3, 8), "int32"),  # wrong dtype
        "2.bias": ((3,), "float32"),
        "extra.weight": ((1,), "float32"),
    }  # 0.bias missing
    problems = " | ".join(check_weights(config, tensors))
    assert "missing keys: 0.bias" in problems
    assert "unexpected keys: extra.weight" in problems
    assert "0.weight: expected [8, 4], got [8, 5]" in problems
    assert "2.weight: int32" in problems
