"""``torchvision``: a torchvision classification model, built by torchvision's own builder with ``weights=None``.

Config: ``{"kind": "torchvision", "name": "resnet18", "num_classes": 10}`` plus, per family, the few
builder keyword arguments listed in :data:`FAMILY_ARGUMENTS` (e.g. ``image_size`` for the ViTs,
``width_mult`` for mobilenet_v2). ``name`` is one of :data:`ALLOWED_NAMES`: classification models
whose forward maps an image batch [B, 3, H, W] to logits [B, num_classes] in eval mode. Left out:
googlenet and inception_v3 (auxiliary heads), maxvit_t (a fixed input size), the regnets (their
builders compute block widths with tensors, which fails on the meta device where specs are built), the detection,
segmentation, video, optical-flow and quantized models. Pretrained weights are never downloaded:
checkpoints bring their own.

torchvision must be the build made for the installed torch (docs/models.md gives the working pair);
it is imported only by the functions that build.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from . import fields
from .fields import ArchitectureError, TensorSpec

KIND = "torchvision"
SPEC_NEEDS_TORCH = True  # the spec comes from a meta-device build (see worker/inspect_architecture.py)

# family -> its builder names (torchvision 0.29).
FAMILIES: dict[str, tuple[str, ...]] = {
    "resnet": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"),
    "vgg": ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"),
    "alexnet": ("alexnet",),
    "mobilenet_v2": ("mobilenet_v2",),
    "mobilenet_v3": ("mobilenet_v3_small", "mobilenet_v3_large"),
    "mnasnet": ("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"),
    "efficientnet": tuple(f"efficientnet_b{i}" for i in range(8)) + ("efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"),
    "densenet": ("densenet121", "densenet161", "densenet169", "densenet201"),
    "squeezenet": ("squeezenet1_0", "squeezenet1_1"),
    "shufflenet": ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"),
    "convnext": ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"),
    "vit": ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"),
    "swin": ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"),
}
FAMILY_OF = {name: family for family, names in FAMILIES.items() for name in names}
ALLOWED_NAMES = tuple(FAMILY_OF)

# Builder keyword arguments accepted besides num_classes: name -> (type, minimum, maximum). Dropout
# rates do not change the state_dict (the estimator runs the model in eval mode); image_size does for
# the ViTs (their position embedding), width_mult does for mobilenet_v2.
_RATE = ("float", 0.0, 1.0)
FAMILY_ARGUMENTS: dict[str, dict[str, tuple[str, float, float]]] = {
    "resnet": {"zero_init_residual": ("bool", 0, 1)},
    "vgg": {"dropout": _RATE},
    "alexnet": {"dropout": _RATE},
    "mobilenet_v2": {"dropout": _RATE, "width_mult": ("float", 0.05, 8.0)},
    "mobilenet_v3": {"dropout": _RATE},
    "mnasnet": {"dropout": _RATE},
    "efficientnet": {},
    "densenet": {"drop_rate": _RATE, "memory_efficient": ("bool", 0, 1)},
    "squeezenet": {"dropout": _RATE},
    "shufflenet": {},
    "convnext": {"stochastic_depth_prob": _RATE},
    "vit": {"image_size": ("int", 1, 4096), "dropout": _RATE, "attention_dropout": _RATE},
    "swin": {},
}
# family -> the class its builders return (what infer matches a user's model against first).
FAMILY_CLASSES = {
    "resnet": "ResNet", "vgg": "VGG", "alexnet": "AlexNet", "mobilenet_v2": "MobileNetV2",
    "mobilenet_v3": "MobileNetV3", "mnasnet": "MNASNet", "efficientnet": "EfficientNet", "densenet": "DenseNet",
    "squeezenet": "SqueezeNet", "shufflenet": "ShuffleNetV2", "convnext": "ConvNeXt",
    "vit": "VisionTransformer", "swin": "SwinTransformer",
}
_VIT_PATCH = {"vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14}


def normalize(c: dict[str, Any]) -> dict[str, Any]:
    name = c.get("name")
    if name not in FAMILY_OF:
        raise ArchitectureError(
            f"torchvision: field 'name' must be one of the classification builders {list(ALLOWED_NAMES)}, got {name!r}"
        )
    family = FAMILY_OF[name]
    arguments = FAMILY_ARGUMENTS[family]
    unknown = sorted(set(c) - set(arguments) - {"kind", "name", "num_classes"})
    if unknown:
        raise ArchitectureError(
            f"torchvision: unknown field(s) {unknown} for {name}; accepted: num_classes"
            + "".join(f", {a}" for a in arguments)
        )
    out: dict[str, Any] = {"kind": KIND, "name": name, "num_classes": fields.integer(c, "num_classes", default=1000)}
    for field, (kind, low, high) in arguments.items():
        if field not in c:
            continue
        value = c[field]
        if kind == "bool":
            out[field] = fields.boolean(c, field, False)
        elif kind == "int":
            out[field] = fields.integer(c, field, minimum=int(low), maximum=int(high))
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ArchitectureError(f"torchvision: field '{field}' must be a number between {low} and {high}, got {value!r}")
            out[field] = float(value)
    if family == "vit" and "image_size" in out and out["image_size"] % _VIT_PATCH[name]:
        raise ArchitectureError(
            f"torchvision: {name} needs an image_size divisible by its patch size {_VIT_PATCH[name]}, got {out['image_size']}"
        )
    return out


def build(c: dict[str, Any]) -> Any:
    """The freshly initialised model (``weights=None``: nothing is downloaded)."""
    models = _models()
    arguments = {k: v for k, v in c.items() if k not in ("kind", "name")}
    return getattr(models, c["name"])(weights=None, **arguments)


def _models() -> Any:
    try:
        from torchvision import models
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch fails in many ways
        raise RuntimeError(
            "kind 'torchvision' needs torchvision built for the installed torch "
            f"(see docs/models.md for the working pair): {type(exc).__name__}: {exc}"
        ) from exc
    return models


def state_dict_spec(c: dict[str, Any]) -> dict[str, TensorSpec]:
    return dict(_cached_spec(json.dumps(c, sort_keys=True)))


@functools.lru_cache(maxsize=64)
def _cached_spec(key: str) -> dict[str, TensorSpec]:
    import torch

    from .hf import spec_of_module

    with torch.device("meta"):
        model = build(json.loads(key))
    return spec_of_module(model)


def infer(model: Any) -> dict[str, Any] | None:
    """The config of a model built by an allowlisted torchvision builder: the builders of the model's
    family are built on the meta device with the model's number of classes (and, for a ViT, its image
    size), and the one whose state_dict has the same keys and shapes is the answer. None for a module
    that is not a torchvision classification model, or one no builder reproduces (e.g. a changed head)."""
    if not type(model).__module__.startswith("torchvision.models."):
        return None
    families = [family for family, class_name in FAMILY_CLASSES.items() if class_name == type(model).__name__]
    shapes = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    if not families or not shapes:
        return None
    classifier_shape = list(shapes.values())[-1]  # every family's state_dict ends with its classifier
    if not classifier_shape:
        return None
    for name in (name for family in families for name in FAMILIES[family]):
        config: dict[str, Any] = {"kind": KIND, "name": name, "num_classes": classifier_shape[0]}
        if FAMILY_OF[name] == "vit" and getattr(model, "image_size", 224) != 224:
            config["image_size"] = model.image_size
        try:
            config = normalize(config)
            candidate = state_dict_spec(config)
        except (ArchitectureError, TypeError, ValueError):
            continue
        if {key: spec.shape for key, spec in candidate.items()} == shapes:
            return config
    return None
