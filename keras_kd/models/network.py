"""What every architecture shares: the task heads on a trunk's named features, and the tools that treat a
model as a bag of named layers (parameter and FLOP counts, weights moved between tasks by layer name or
selected from a wider network of the same layers)."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from keras_kd.keras import keras, tf
from keras_kd.models import heads as heads_lib

# Batch norm of every trunk: statistics averaged with momentum 0.9, so that a quick run's few hundred steps
# move them (keras.applications' 0.999 did not: models/mobilenet_v3.py).
BN = dict(momentum=0.9, epsilon=1e-5)


def assemble(images, feats: Dict[str, tf.Tensor], num_classes: int, heads: Sequence[str] = (),
             embedding_dim: int = 0, name: str = "model", landmark_head: str = "pooled") -> keras.Model:
    """A plain functional model: image → {"logits", "hidden", "hint", *task heads}.

    Every network keeps the classification head ("logits"): the paper computes soft targets from it in
    alignment and verification too.
    """
    outputs = {"logits": heads_lib.logits(feats["hidden"], num_classes),
               "hidden": feats["hidden"], "hint": feats["hint"]}
    for head in heads:
        outputs[head], outputs["hidden"] = heads_lib.HEADS[head](feats, embedding_dim=embedding_dim,
                                                                 landmark_head=landmark_head)
    return keras.Model(images, outputs, name=name)


def count_params(model: keras.Model) -> int:
    return int(sum(int(tf.size(w)) for w in model.trainable_weights))


def count_flops(model: keras.Model) -> int:
    """Forward FLOPs of one image (2 × multiply-adds of convolutions, depthwise ones too, and dense layers)."""
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c_out = layer.output_shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * kh * kw * c_out
        elif isinstance(layer, keras.layers.Conv2D):
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
    copied = []
    for layer, other in _same_names(src, dst):
        a, b = [w.shape for w in other.weights], [w.shape for w in layer.weights]
        if a != b:
            raise ValueError(f"cannot transfer layer {layer.name!r}: shapes {a} vs {b} "
                             "(different width_divisor, image size or class count?)")
        layer.set_weights(other.get_weights())
        copied.append(layer.name)
    return copied


def select_weights(src: keras.Model, dst: keras.Model) -> list:
    """Weight selection (Xu et al., "Initializing Models with Larger Ones", ICLR 2024): a narrower network
    of the same layers starts from evenly spaced elements of a wider one's weights; returns the layers set.

    Every axis keeps the same indices wherever it has the same length, so a channel selected in one layer is
    the one the next layer reads and the residual sums add; layers of equal shapes are copied as they are.
    """
    selected = []
    for layer, other in _same_names(src, dst):
        a, b = [tuple(w.shape) for w in other.weights], [tuple(w.shape) for w in layer.weights]
        if len(a) != len(b) or any(len(x) != len(y) or any(n < m for n, m in zip(x, y)) for x, y in zip(a, b)):
            raise ValueError(f"cannot select the weights of layer {layer.name!r} from {src.name!r}: shapes {a} "
                             f"vs {b} (the source must be the same network, at least as wide on every axis)")
        layer.set_weights([_select(w, shape) for w, shape in zip(other.get_weights(), b)])
        selected.append(layer.name)
    return selected


def _same_names(src: keras.Model, dst: keras.Model) -> list:
    """(dst layer, src layer of the same name) for each dst layer with weights that src has."""
    by_name = {l.name: l for l in src.layers if l.weights}
    return [(layer, by_name[layer.name]) for layer in dst.layers if layer.weights and layer.name in by_name]


def _select(w: np.ndarray, shape: tuple) -> np.ndarray:
    """Evenly spaced elements of w along every axis (every k-th when the lengths divide, as the paper's code)."""
    for axis, (n, m) in enumerate(zip(w.shape, shape)):
        if n != m:
            idx = np.arange(m) * (n // m) if n % m == 0 else np.round(np.linspace(0, n - 1, m)).astype(int)
            w = np.take(w, idx, axis=axis)
    return w
