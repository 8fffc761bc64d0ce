"""A faster gradient of Conv2D with respect to its input, for CPUs.

Why: on CPUs without AVX-512 (measured on a 2-core AMD EPYC with AVX2), TensorFlow's Conv2DBackpropInput is
up to 30 times slower than the forward convolution on the small, deep maps of ResNet-50's last stages
(2×2×512 with a 3×3 kernel, batch 32: 302 ms against 10.6 ms), and it dominates a training step at the
input sizes a CPU can afford (`python -m bench.conv_grad` measures it). The input gradient of a convolution
is itself a convolution: of the output gradient, zero-interleaved for strided convolutions, with the kernel
flipped and its channels swapped. This computes it that way, with the forward Conv2D kernel.

`install()` replaces the registered gradient of the Conv2D op (process-wide, for graphs traced afterwards).
Nothing installs it on import: it is called where training starts (the Runner's `_train`, export's
distillation fine-tuning, the benchmarks' `common.header`), and again is harmless. The filter gradient and
every case it does not handle (NCHW, dilation, explicit padding, unknown kernel size, fewer than 16 input
channels) stay TensorFlow's own, and so do bfloat16 convolutions (a teacher under --teacher_precision), whose
TensorFlow gradient was the faster one (bench/RESULTS.md section 12). KERAS_KD_CONV_GRAD: "auto" (the
default) uses it when no GPU is visible and the CPU has no Intel AMX (on such a CPU TensorFlow's own input
gradient was the faster one, section 10), "fast" always, "tf" never.
"""
from __future__ import annotations

import os
from typing import Optional

from keras_kd import cpu
from keras_kd.keras import tf  # first: TF_USE_LEGACY_KERAS is set before TensorFlow loads
from tensorflow.python.framework import ops  # the gradient registry has no public API to replace an entry
from tensorflow.python.ops import nn_grad

_TF_GRAD = nn_grad._Conv2DGrad  # noqa: SLF001
# Below this many input channels (an RGB stem) the flipped convolution has too few outputs to be efficient,
# and TensorFlow's own input gradient is the faster one (measured: 7×7 stem, 48 px: 24 ms against 126 ms).
MIN_INPUT_CHANNELS = 16


def _attr(op, name):
    v = op.get_attr(name)
    return v.decode() if isinstance(v, bytes) else v


def _same_pad_before(size: tf.Tensor, out: tf.Tensor, k: int, s: int) -> tf.Tensor:
    return tf.maximum((out - 1) * s + k - size, 0) // 2


def _axis_input_grad(g: tf.Tensor, axis: int, size, k: int, s: int, pad_before) -> tf.Tensor:
    """Along one spatial axis: zero-interleave g by the stride and pad it so that a VALID correlation with
    the flipped kernel gives exactly `size` positions of the input gradient."""
    if s > 1:
        shape = tf.shape(g)
        g = tf.expand_dims(g, axis + 1)
        paddings = [[0, 0]] * 5
        paddings[axis + 1] = [0, s - 1]
        g = tf.pad(g, paddings)
        g = tf.reshape(g, tf.stack([shape[i] * s if i == axis else shape[i] for i in range(4)]))
    n = tf.shape(g)[axis]
    left = k - 1 - pad_before
    right = size + k - 1 - left - n
    # A negative right pad (the stride skipped the input's last rows) crops instead.
    keep = n + tf.minimum(right, 0)
    begin, sizes = [0, 0, 0, 0], [-1, -1, -1, -1]
    sizes[axis] = keep
    g = tf.slice(g, begin, sizes)
    paddings = [[0, 0]] * 4
    paddings[axis] = [left, tf.maximum(right, 0)]
    return tf.pad(g, paddings)


def conv2d_input_grad(grad: tf.Tensor, kernel: tf.Tensor, input_shape: tf.Tensor, strides, padding: str):
    """d(loss)/d(input) of tf.nn.conv2d(input, kernel, strides, padding) in NHWC, from the output gradient,
    with forward convolutions only."""
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    sh, sw = strides
    h, w = input_shape[1], input_shape[2]
    if padding == "SAME":
        ph = _same_pad_before(h, tf.shape(grad)[1], kh, sh)
        pw = _same_pad_before(w, tf.shape(grad)[2], kw, sw)
    else:
        ph = pw = 0
    g = _axis_input_grad(grad, 1, h, kh, sh, ph)
    g = _axis_input_grad(g, 2, w, kw, sw, pw)
    flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
    return tf.nn.conv2d(g, flipped, 1, "VALID")


def _conv2d_grad(op, grad):
    strides, padding, fmt = list(op.get_attr("strides")), _attr(op, "padding"), _attr(op, "data_format")
    kernel = op.inputs[1]
    if (fmt != "NHWC" or list(op.get_attr("dilations")) != [1, 1, 1, 1] or padding not in ("SAME", "VALID")
            or None in kernel.shape or strides[0] != 1 or strides[3] != 1
            or kernel.shape[2] < MIN_INPUT_CHANNELS or kernel.dtype == tf.bfloat16):
        return _TF_GRAD(op, grad)
    dx = conv2d_input_grad(grad, kernel, tf.shape(op.inputs[0]), strides[1:3], padding)
    dx = tf.ensure_shape(dx, op.inputs[0].shape)
    dw = tf.raw_ops.Conv2DBackpropFilter(input=op.inputs[0], filter_sizes=tf.shape(kernel), out_backprop=grad,
                                         strides=strides, padding=padding, data_format=fmt)
    return [dx, dw]


def install(mode: Optional[str] = None) -> bool:
    """Sets Conv2D's gradient for graphs traced from now on, by `mode` (default: $KERAS_KD_CONV_GRAD, else
    "auto"); returns whether the forward-convolution input gradient is in use."""
    entry = ops._gradient_registry._registry["Conv2D"]  # noqa: SLF001
    mode = mode or os.environ.get("KERAS_KD_CONV_GRAD", "auto")
    if mode not in ("auto", "fast", "tf"):
        raise ValueError(f"KERAS_KD_CONV_GRAD={mode}: expected auto, fast or tf")
    # cuDNN's input gradient is fast and this has not been measured on a GPU: "auto" keeps TensorFlow's there,
    # and on the CPUs where it measured faster (Intel's with AMX).
    use = mode == "fast" or (mode == "auto" and not tf.config.list_physical_devices("GPU")
                             and not cpu.has("amx_tile"))
    entry["type"] = _conv2d_grad if use else _TF_GRAD
    return use


def uninstall() -> None:
    ops._gradient_registry._registry["Conv2D"]["type"] = _TF_GRAD  # noqa: SLF001
