"""Kind ``torchvision``: the pinned pair imports, every allowlisted builder's meta-device spec matches
its real build, keyword arguments are validated, inference finds the builder, and the library scores
a ResNet-18 built from the registry."""

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
    num_params,
    spec_needs_torch,
    state_dict_spec,
    token_limits,
)
from estimator.architectures.torchvision import ALLOWED_NAMES, FAMILY_OF

ROOT = Path(__file__).resolve().parents[2]
RESNET18 = {"kind": "torchvision", "name": "resnet18", "num_classes": 10}


def test_torchvision_imports_with_its_compiled_ops():
    """The failure the pairing avoids: a torchvision built for another torch cannot register its ops."""
    import torchvision
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    assert torchvision.__version__


def test_normalize_is_plain_python():
    code = (
        "import json, sys\n"
        "from estimator.architectures import normalize\n"
        f"normalize({RESNET18!r})\n"
        "print(json.dumps(['torch' in sys.modules, 'torchvision' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    assert json.loads(out.stdout) == [False, False]


# One small-enough builder per family is built for real; every allowlisted name is built on meta.
REAL_BUILDS = [
    {"kind": "torchvision", "name": "resnet18", "num_classes": 10},
    {"kind": "torchvision", "name": "resnext50_32x4d", "num_classes": 7, "zero_init_residual": True},
    {"kind": "torchvision", "name": "vgg11_bn", "num_classes": 4, "dropout": 0.0},
    {"kind": "torchvision", "name": "alexnet", "num_classes": 3},
    {"kind": "torchvision", "name": "mobilenet_v2", "num_classes": 5, "width_mult": 0.5},
    {"kind": "torchvision", "name": "mobilenet_v3_small", "num_classes": 6},
    {"kind": "torchvision", "name": "mnasnet0_5", "num_classes": 2},
    {"kind": "torchvision", "name": "efficientnet_b0", "num_classes": 10},
    {"kind": "torchvision", "name": "densenet121", "num_classes": 10, "drop_rate": 0.1},
    {"kind": "torchvision", "name": "squeezenet1_1", "num_classes": 10},
    {"kind": "torchvision", "name": "shufflenet_v2_x0_5", "num_classes": 10},
    {"kind": "torchvision", "name": "convnext_tiny", "num_classes": 10},
    {"kind": "torchvision", "name": "vit_b_32", "num_classes": 10, "image_size": 64},
    {"kind": "torchvision", "name": "swin_t", "num_classes": 10},
]


def test_one_real_build_per_family():
    assert {FAMILY_OF[c["name"]] for c in REAL_BUILDS} == set(FAMILY_OF.values())


@pytest.mark.parametrize("config", REAL_BUILDS, ids=lambda c: c["name"])
def test_state_dict_spec_matches_the_real_build(config):
    torch.manual_seed(0)
    normalized = normalize(config)
    assert spec_needs_torch(normalized) and token_limits(normalized) is None
    model = build_model(config)
    spec = state_dict_spec(normalized)
    state = model.state_dict()
    assert list(spec) == list(state)
    parameter_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    for key, tensor in state.items():
        assert spec[key].shape == tuple(tensor.shape), key
        assert spec[key].parameter == (key in parameter_names), key
        assert spec[key].integer == (not tensor.is_floating_point()), key
    assert num_params(normalized) == sum(p.numel() for p in model.parameters())
    tensors = {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in state.items()}
    assert check_weights(normalized, tensors) == []
    if "width_mult" in normalized:  # not read back from a model: it is passed explicitly
        with pytest.raises(ValueError, match="cannot infer"):
            infer_architecture(model)
    else:  # arguments that leave the state_dict unchanged (dropout rates) are not recovered
        inferred = infer_architecture(model)
        assert inferred["name"] == normalized["name"] and state_dict_spec(inferred) == spec
    side = normalized.get("image_size", 64)
    with torch.no_grad():
        assert tuple(model.eval()(torch.randn(2, 3, side, side)).shape) == (2, normalized["num_classes"])


@pytest.mark.parametrize("name", ALLOWED_NAMES)
def test_every_allowlisted_builder_has_a_meta_spec(name):
    spec = state_dict_spec(normalize({"kind": "torchvision", "name": name, "num_classes": 10}))
    assert spec and all(s.tied_to is None for s in spec.values())


def test_inspector_answers_for_torchvision():
    from worker.inspect_architecture import spec_of

    answer = spec_of(normalize(RESNET18))
    assert answer["ok"] and answer["num_params"] == 11_181_642


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "torchvision", "name": "fasterrcnn_resnet50_fpn", "num_classes": 2}, "field 'name' must be one of"),
        ({"kind": "torchvision", "name": "inception_v3", "num_classes": 2}, "field 'name' must be one of"),
        ({"kind": "torchvision", "name": "resnet18", "num_classes": 0}, "'num_classes' must be between"),
        ({"kind": "torchvision", "name": "resnet18", "num_classes": 10, "weights": "IMAGENET1K_V1"}, "unknown field(s) ['weights']"),
        ({"kind": "torchvision", "name": "resnet18", "num_classes": 10, "dropout": 0.1}, "unknown field(s) ['dropout']"),
        ({"kind": "torchvision", "name": "vgg11", "num_classes": 10, "dropout": 2}, "'dropout' must be a number between"),
        ({"kind": "torchvision", "name": "vit_b_16", "num_classes": 10, "image_size": 40}, "divisible by its patch size 16"),
    ],
)
def test_refusals(config, message):
    with pytest.raises(ArchitectureError) as err:
        normalize(config)
    assert message in str(err.value)


def test_infer_returns_none_for_a_changed_head():
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.fc = torch.nn.Sequential(torch.nn.Linear(512, 10))
    with pytest.raises(ValueError, match="cannot infer the architecture"):
        infer_architecture(model)


def test_load_model_round_trip(tmp_path):
    from safetensors.torch import save_file

    from worker.loading import load_model

    model = build_model(RESNET18).eval()
    save_file(dict(model.state_dict()), tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors", "safetensors", RESNET18)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_the_library_scores_a_resnet18_from_the_registry(one_torch_thread):
    """ResNet-18 (num_classes 10) on small random 3x32x32 data: a short fixed-epsilon run gives a
    finite λ̂. Plumbing, not accuracy."""
    from estimator import LLCConfig, estimate_llc

    torch.manual_seed(0)
    model = build_model(RESNET18).eval()
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    config = LLCConfig(seed=0, epsilon=1e-6, gamma=100.0, num_chains=2, num_draws=4, num_burnin_steps=2,
                       batch_size=16, device="cpu", chain_mode="sequential")
    result = estimate_llc(model, (x, y), loss="cross_entropy", config=config)
    assert result.llc_mean == result.llc_mean  # not NaN
    assert result.num_params == 11_181_642
