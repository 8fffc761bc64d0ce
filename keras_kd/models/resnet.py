"""ResNet-50 (bottleneck 3-4-6-3) whose every layer's channel count is divided by `width_divisor`.

The paper's teacher is width_divisor=1; its students are 2, 4 and 8. The model is one flat functional model
with stable layer names, so that weights move between tasks by name (classification → alignment →
verification), tfmot can wrap its layers for QAT/pruning, and distillation losses can tap named features:

    "hint"    output of stage 2 (conv3_x), the FitNet hint layer
    "hidden"  the layer K that feeds the final fully-connected layer of the task head: the globally pooled
              features, or the spatial landmark head's reduced map (models/heads.py)

Distillation losses that compare other intermediate features (attention transfer reads every stage) find
them by layer name in `FEATURE_LAYERS`, the mapping of this architecture's feature names to its layers,
through `models/archs.feature_model`: the model itself, its layers shared, never rebuilt with extra outputs (so its
saved weights and exported signatures stay those of the plain network).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from keras_kd.keras import keras, tf
from keras_kd.models import network
from keras_kd.models.network import BN

BLOCKS = (3, 4, 6, 3)
BASE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
HINT_STAGE = 2


def feature_layers(blocks: Sequence[int] = BLOCKS) -> Dict[str, str]:
    """Feature name → layer name. "stageN" is the output of stage N's last bottleneck block (post-ReLU),
    spatial size image_size / 2^(N+1) at every width; the teacher's and students' maps differ in channels."""
    return {**{f"stage{s}": f"s{s}b{n}_out" for s, n in enumerate(blocks, start=1)},
            "hint": f"s{HINT_STAGE}b{blocks[HINT_STAGE - 1]}_out", "hidden": "hidden"}


FEATURE_LAYERS: Dict[str, str] = feature_layers(BLOCKS)


def blocks_of(layer_names) -> Optional[Tuple[int, ...]]:
    """The block counts of a ResNet built by `backbone` from its layer names (None when it is not one)."""
    names = set(layer_names)
    if "stem_conv" not in names:
        return None
    counts = tuple(max((b for b in range(1, 64) if f"s{s}b{b}_out" in names), default=0)
                   for s in range(1, len(BLOCKS) + 1))
    return counts if all(counts) else None


def _ch(c: int, d: int) -> int:
    return max(1, c // d)


def _bottleneck(x, filters: int, stride: int, name: str, project: bool):
    shortcut = x
    if project:
        shortcut = keras.layers.Conv2D(filters * EXPANSION, 1, stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = keras.layers.BatchNormalization(**BN, name=f"{name}_proj_bn")(shortcut)
    y = keras.layers.Conv2D(filters, 1, 1, use_bias=False, name=f"{name}_conv1")(x)
    y = keras.layers.BatchNormalization(**BN, name=f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(**BN, name=f"{name}_bn2")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = keras.layers.Conv2D(filters * EXPANSION, 1, 1, use_bias=False, name=f"{name}_conv3")(y)
    # Zero-init of the last BN's scale makes each block start as identity: deep nets train from step one.
    y = keras.layers.BatchNormalization(**BN, gamma_initializer="zeros", name=f"{name}_bn3")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def backbone(images, width_divisor: int = 1, width: float = 1.0,
             blocks: Sequence[int] = BLOCKS) -> Dict[str, tf.Tensor]:
    """ResNet trunk on `images` (float pixels in [0, 1]); returns the named feature tensors."""
    d = int(width_divisor)
    if d < 1:
        raise ValueError(f"width_divisor must be a positive integer, got {width_divisor}")
    if len(blocks) != len(BLOCKS) or min(blocks) < 1:
        raise ValueError(f"blocks must be {len(BLOCKS)} positive block counts per stage, got {tuple(blocks)}")
    # The paper: batch normalization right after the input, no mean subtraction or whitening.
    x = keras.layers.BatchNormalization(**BN, name="input_bn")(images)
    x = keras.layers.Conv2D(_ch(64, d), 7, 2, padding="same", use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(**BN, name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    feats = {}
    for s, (n, w) in enumerate(zip(blocks, BASE_WIDTHS), start=1):
        for b in range(n):
            stride = 2 if (b == 0 and s > 1) else 1
            x = _bottleneck(x, _ch(w, d), stride, f"s{s}b{b + 1}", project=(b == 0))
        feats[f"stage{s}"] = x
    feats["hint"] = feats[f"stage{HINT_STAGE}"]
    feats["hidden"] = keras.layers.GlobalAveragePooling2D(name="hidden")(x)
    return feats


def build_model(width_divisor: int, image_size: int, num_classes: int, heads: Sequence[str] = (),
                embedding_dim: int = 0, name: str = "model", landmark_head: str = "pooled",
                blocks: Sequence[int] = BLOCKS) -> keras.Model:
    """ResNet-50/d with the task heads (models/network.assemble)."""
    images = keras.Input((image_size, image_size, 3), name="image")
    return network.assemble(images, backbone(images, width_divisor, blocks=blocks), num_classes, heads,
                            embedding_dim, name, landmark_head)
