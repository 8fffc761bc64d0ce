"""The registry of network architectures: teacher and students are built by name.

    build_model("resnet50", width_divisor=8, ...)          the paper's ResNet-50/8 student
    build_model("mobilefacenet", width=0.5, ...)            a half-width MobileFaceNet

An architecture is one module with `backbone(images, width_divisor, width) → {feature name: tensor}` (the
named features "stage1".."stage4", "hint" and "hidden" = the pooled K) and one `Arch` entry below: its
FEATURE_LAYERS (feature name → layer name, how distillation losses tap a built model's features) and the
short tag its stage names carry ("student_mbf_label_soft"). The task heads are the same on every trunk
(models/network.assemble).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Sequence

from keras_kd.keras import keras
from keras_kd.models import mobilefacenet, mobilenet_v3, network, precision, resnet

DEFAULT = "resnet50"


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    tag: str                          # in stage names: student_<tag>_...; ResNet's is d<divisor>
    backbone: Callable
    feature_layers: Mapping[str, str]
    width_multiplier: bool            # whether --student_width applies (ResNet takes divisors instead)
    blocks: bool = False              # whether --resnet_blocks applies (its backbone takes `blocks`)


ARCHS: Dict[str, Arch] = {a.name: a for a in [
    # ResNet-50 (bottleneck 3-4-6-3), channels ÷ d: the paper's teacher and students
    Arch("resnet50", "d", resnet.backbone, resnet.FEATURE_LAYERS, False, blocks=True),
    # MobileFaceNet (arXiv 1804.07573): inverted bottlenecks, PReLU, GDConv, 128-d K
    Arch("mobilefacenet", "mbf", mobilefacenet.backbone, mobilefacenet.FEATURE_LAYERS, True),
    # MobileNetV3 Small and Large from keras.applications (no pretrained weights)
    Arch("mobilenet_v3_small", "mv3s", mobilenet_v3.backbone_small, mobilenet_v3.FEATURE_LAYERS_SMALL, True),
    Arch("mobilenet_v3_large", "mv3l", mobilenet_v3.backbone_large, mobilenet_v3.FEATURE_LAYERS_LARGE, True),
]}


def get(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHS)}") from None


def student_tag(arch: str, width_divisor: int = 1, width: float = 1.0) -> str:
    """The part of a stage name that says which network it is: d8 (ResNet-50/8), mbf, mv3s_x0p5 (width 0.5)."""
    a = get(arch)
    if not a.width_multiplier:
        return f"d{int(width_divisor)}"
    return a.tag if float(width) == 1.0 else f"{a.tag}_x{float(width):g}".replace(".", "p")  # mv3s_x0p5


def build_model(arch: str, width_divisor: int, image_size: int, num_classes: int, heads: Sequence[str] = (),
                embedding_dim: int = 0, name: str = "model", landmark_head: str = "pooled",
                width: float = 1.0, blocks: Sequence[int] = (), compute: str = "float32") -> keras.Model:
    """A plain functional model of architecture `arch`: image → {"logits", "hidden", "hint", *heads}.

    `blocks` (ResNet only; ignored by the others) sets the residual blocks per stage: (1, 1, 1, 1) is the
    shallow trunk the plumbing tests build in a fraction of ResNet-50's time. `compute` ("float32" or
    "bfloat16", models/precision.py) is what its layers compute in; its outputs are float32 either way."""
    if float(width) <= 0:
        raise ValueError(f"width must be positive, got {width}")
    a = get(arch)
    images = keras.Input((image_size, image_size, 3), name="image")
    depth = {"blocks": tuple(blocks)} if a.blocks and blocks else {}
    with precision.building(compute):
        feats = a.backbone(images, width_divisor=width_divisor, width=width, **depth)
        model = network.assemble(images, feats, num_classes, heads, embedding_dim, name, landmark_head)
    if compute == "float32":
        return model
    return keras.Model(images, precision.float32(model.output), name=name)


def feature_layers(model: keras.Model) -> Mapping[str, str]:
    """The FEATURE_LAYERS of the architecture `model` was built as: the one whose layers it all has."""
    names = {layer.name for layer in model.layers}
    for a in ARCHS.values():
        if all(v in names for v in a.feature_layers.values()):
            return a.feature_layers
    blocks = resnet.blocks_of(names)  # a ResNet of other block counts (--resnet_blocks)
    return resnet.feature_layers(blocks) if blocks else {}


def feature_model(model: keras.Model, keys: Sequence[str]) -> keras.Model:
    """`model` when its outputs hold every key; else a model over the same layers that also returns them.

    The extra outputs come from the layers named in its architecture's FEATURE_LAYERS; calling the result
    runs the network once and updates the same variables (batch-norm statistics included) as calling
    `model` would.
    """
    outputs = dict(model.output)
    missing = [k for k in keys if k not in outputs]
    if not missing:
        return model
    layers = feature_layers(model)
    unknown = [k for k in missing if k not in layers]
    if unknown:
        raise ValueError(f"no feature named {unknown} in {model.name}; known: {', '.join(layers) or 'none'}")
    outputs.update(precision.float32({k: model.get_layer(layers[k]).output for k in missing}))
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")
