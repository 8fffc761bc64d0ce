"""ResNet-50 (bottleneck 3-4-6-3) whose every layer's channel count is divided by `width_divisor`.

The paper's teacher is width_divisor=1; its students are 2, 4 and 8. The model is one flat functional model
with stable layer names, so that weights move between tasks by name (classification → alignment →
verification), tfmot can wrap its layers for QAT/pruning, and distillation losses can tap named features:

    "hint"    output of stage 2 (conv3_x), the FitNet hint layer
    "hidden"  the layer K that feeds the final fully-connected layer of the task head: the globally pooled
              features, or the spatial landmark head's reduced map (models/heads.py)

Distillation losses that compare other intermediate features (attention transfer reads every stage) find
them by layer name in `FEATURE_LAYERS`, the mapping of this architecture's feature names to its layers,
through `feature_model`: the model itself, its layers shared, never rebuilt with extra outputs (so its
saved weights and exported signatures stay those of the plain network).
"""
from __future__ import annotations

from typing import Dict, Sequence

from keras_kd.keras import keras, tf
from keras_kd.models import heads as heads_lib

BLOCKS = (3, 4, 6, 3)
BASE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
HINT_STAGE = 2
BN = dict(momentum=0.9, epsilon=1e-5)


# Feature name → layer name. "stageN" is the output of stage N's last bottleneck block (post-ReLU),
# spatial size image_size / 2^(N+1) at every width; the teacher's and students' maps differ in channels only.
FEATURE_LAYERS: Dict[str, str] = {
    **{f"stage{s}": f"s{s}b{n}_out" for s, n in enumerate(BLOCKS, start=1)},
    "hint": f"s{HINT_STAGE}b{BLOCKS[HINT_STAGE - 1]}_out",
    "hidden": "hidden",
}


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


def backbone(images, width_divisor: int = 1, blocks: Sequence[int] = BLOCKS) -> Dict[str, tf.Tensor]:
    """ResNet trunk on `images` (float pixels in [0, 1]); returns the named feature tensors."""
    d = int(width_divisor)
    if d < 1:
        raise ValueError(f"width_divisor must be a positive integer, got {width_divisor}")
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
                embedding_dim: int = 0, name: str = "model", landmark_head: str = "pooled") -> keras.Model:
    """A plain functional model: image → {"logits", "hidden", "hint", *task heads}.

    Every network keeps the classification head ("logits"): the paper computes soft targets from it in
    alignment and verification too.
    """
    images = keras.Input((image_size, image_size, 3), name="image")
    feats = backbone(images, width_divisor)
    outputs = {"logits": heads_lib.logits(feats["hidden"], num_classes),
               "hidden": feats["hidden"], "hint": feats["hint"]}
    for head in heads:
        outputs[head], outputs["hidden"] = heads_lib.HEADS[head](feats, embedding_dim=embedding_dim,
                                                                 landmark_head=landmark_head)
    return keras.Model(images, outputs, name=name)


def feature_model(model: keras.Model, keys: Sequence[str]) -> keras.Model:
    """`model` when its outputs hold every key; else a model over the same layers that also returns them.

    The extra outputs come from the layers named in FEATURE_LAYERS; calling the result runs the network
    once and updates the same variables (batch-norm statistics included) as calling `model` would.
    """
    outputs = dict(model.output)
    missing = [k for k in keys if k not in outputs]
    if not missing:
        return model
    unknown = [k for k in missing if k not in FEATURE_LAYERS]
    if unknown:
        raise ValueError(f"no feature named {unknown} in {model.name}; known: {', '.join(FEATURE_LAYERS)}")
    outputs.update({k: model.get_layer(FEATURE_LAYERS[k]).output for k in missing})
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")


def count_params(model: keras.Model) -> int:
    return int(sum(int(tf.size(w)) for w in model.trainable_weights))


def count_flops(model: keras.Model) -> int:
    """Forward FLOPs of one image (2 × multiply-adds of convolutions and dense layers)."""
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output_shape
            kh, kw = layer.kernel_size
            c_in = layer.input_shape[-1]
            flops += 2 * h * w * kh * kw * c_in * c_out // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input_shape[-1] * layer.units
    return int(flops)


def transfer_weights(src: keras.Model, dst: keras.Model) -> list:
    """Copies weights layer by layer where names and shapes match; returns the names of layers copied.

    This is how a network moves between tasks: the trunk and the classification head carry over, the new
    task's head stays freshly initialized. A shape mismatch on a shared name is an error (never silently
    skipped): it means the two models are not the same architecture.
    """
    by_name = {l.name: l for l in src.layers if l.weights}
    copied = []
    for layer in dst.layers:
        other = by_name.get(layer.name)
        if other is None or not layer.weights:
            continue
        a, b = [w.shape for w in other.weights], [w.shape for w in layer.weights]
        if a != b:
            raise ValueError(f"cannot transfer layer {layer.name!r}: shapes {a} vs {b} "
                             "(different width_divisor, image size or class count?)")
        layer.set_weights(other.get_weights())
        copied.append(layer.name)
    return copied
