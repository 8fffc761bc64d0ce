"""The same functions in other ops, where LiteRT's CPU delegate (XNNPACK) has no int8 kernel for the op the
converter would write: MobileFaceNet's PReLU (PRELU) and MobileNetV3's hard-swish (the converter fuses it into
HARD_SWISH). Such an op runs on the reference kernel between delegated partitions: MobileFaceNet's int8 file
was 14× slower, MobileNetV3's 2.4-2.8× (bench.int8_ops, bench/RESULTS.md section 9).

``rewrite(model)`` is what export.saved_model traces (so the SavedModel and every .tflite file converted
from it have the rewritten ops) and, PReLU only, what QAT trains (export.optimize.quantize_aware).
"""
from __future__ import annotations

import numpy as np
from absl import logging

from keras_kd.keras import keras, tf


class MaxPReLU(keras.layers.PReLU):
    """PReLU computed as max(x, α·x) (MUL, MAXIMUM): the same function while every slope α ≤ 1."""

    def call(self, inputs):
        return tf.maximum(inputs, inputs * self.alpha)


class HardSwish(keras.layers.Multiply):
    """keras.applications' hard-swish, Multiply([x, relu6(x + 3) · 1/6]), computed as x · min(relu(x/6 + 1/2), 1)
    from x alone (MUL, ADD, MINIMUM; the second input is left unused; the two differ by float rounding only).
    Written as relu(x + 3) · 1/6, which rounds as the original does, it ran 1.7-2× slower in int8."""

    def _merge_function(self, inputs):
        x = inputs[0]
        return x * tf.minimum(tf.nn.relu(x * (1.0 / 6.0) + 0.5), 1.0)


def inbound_layers(layer) -> list:
    """The layers whose outputs ``layer`` is called on, over all its calls (functional tf_keras models)."""
    return [l for node in layer.inbound_nodes for l in tf.nest.flatten(node.inbound_layers)]


def is_op_layer(layer) -> bool:
    """A TFOpLambda: a TF function called on Keras tensors (not a public tf_keras class)."""
    return type(layer).__name__ == "TFOpLambda"


def _op_constant(layer, function: str):
    """The constant operand of a TFOpLambda layer calling ``function`` on one tensor, else None."""
    if not is_op_layer(layer) or layer.get_config().get("function") != function or len(layer.inbound_nodes) != 1:
        return None
    args = layer.inbound_nodes[0].call_args
    return args[1] if len(args) == 2 and isinstance(args[1], float) else None


def is_hard_swish(layer) -> bool:
    """Whether ``layer`` is the Multiply of keras.applications' hard_swish(x): x · (ReLU(6)(x + 3) · 1/6)."""
    if type(layer) is not keras.layers.Multiply or len(layer.inbound_nodes) != 1:
        return False
    ins = inbound_layers(layer)
    if len(ins) != 2 or _op_constant(ins[1], "math.multiply") != 1.0 / 6.0:
        return False
    relu = inbound_layers(ins[1])[0]
    if not isinstance(relu, keras.layers.ReLU) or relu.max_value is None or float(relu.max_value) != 6.0:
        return False
    add = inbound_layers(relu)[0]
    return _op_constant(add, "__operators__.add") == 3.0 and inbound_layers(add) == [ins[0]]


def rewrite(model: keras.Model, hard_swish: bool = True) -> keras.Model:
    """``model`` itself when it has nothing to rewrite; else a copy with the same weights and outputs whose
    PReLU layers are MaxPReLU and (with ``hard_swish``) whose hard-swish Multiply layers are HardSwish: the
    same functions in ops LiteRT runs fast in int8. A PReLU with a slope above 1, where max(x, α·x) would
    differ, stays PReLU."""
    prelus = [layer for layer in model.layers if type(layer) is keras.layers.PReLU]
    swishes = {layer.name for layer in model.layers if hard_swish and is_hard_swish(layer)}
    if not prelus and not swishes:
        return model
    steep = {layer.name for layer in prelus if float(np.max(layer.get_weights()[0])) > 1.0}
    if steep:
        logging.warning("export: %d PReLU layer(s) of %s have a slope above 1 and stay TFLite PRELU ops, "
                        "which LiteRT runs slowly in int8: %s", len(steep), model.name, ", ".join(sorted(steep)))

    def clone(layer):
        cls = type(layer)
        if cls is keras.layers.PReLU and layer.name not in steep:
            cls = MaxPReLU
        elif layer.name in swishes:
            cls = HardSwish
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
