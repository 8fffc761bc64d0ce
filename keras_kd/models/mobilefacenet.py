"""MobileFaceNet (Chen et al., arXiv 1804.07573, Table 1): inverted residual bottlenecks with PReLU, a
global depthwise convolution (GDConv) instead of global average pooling, and a linear 128-d embedding.

A plain functional definition (keras.applications has none) with stable layer names "mbf_*". `width`
scales every convolution's channels (rounded to multiples of 8); the embedding K stays 128-d, the usual
face-descriptor size. Its strides are 2, 4, 8, 16 (the paper's 112 px input gives a 7×7 map for GDConv;
48 px gives 3×3): stage4 is the stride-16 1×1 expansion to 512, so its map is twice the size of ResNet's
stride-32 stage4 (attention transfer resizes; distill/losses.py).
"""
from __future__ import annotations

from typing import Dict

from keras_kd.keras import keras, tf
from keras_kd.models.network import BN

EMBEDDING = 128
# (expansion t, channels c, repeats n, first stride s), the paper's Table 1; the stage each group ends.
BOTTLENECKS = ((2, 64, 5, 2, "stage1"), (4, 128, 1, 2, None), (2, 128, 6, 1, "stage2"),
               (4, 128, 1, 2, None), (2, 128, 2, 1, "stage3"))

FEATURE_LAYERS: Dict[str, str] = {
    "stage1": "mbf_stage1_out", "stage2": "mbf_stage2_out", "stage3": "mbf_stage3_out",
    "stage4": "mbf_stage4_out", "hint": "mbf_stage2_out", "hidden": "hidden",
}


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8)) * 8)


def _conv(x, filters, kernel, stride, name, act=True, depthwise=False):
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=name)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(**BN, name=f"{name}_bn")(x)
    return keras.layers.PReLU(shared_axes=[1, 2], name=f"{name}_prelu")(x) if act else x


def _bottleneck(x, t: int, c: int, stride: int, name: str):
    y = _conv(x, x.shape[-1] * t, 1, 1, f"{name}_expand")
    y = _conv(y, None, 3, stride, f"{name}_dw", depthwise=True)
    y = _conv(y, c, 1, 1, f"{name}_project", act=False)
    if stride == 1 and x.shape[-1] == c:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def backbone(images, width_divisor: int = 1, width: float = 1.0) -> Dict[str, tf.Tensor]:
    """MobileFaceNet trunk on `images` (float pixels in [0, 1]); returns the named feature tensors."""
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="mbf_input_scale")(images)
    x = _conv(x, _ch(64, width), 3, 2, "mbf_stem")
    x = _conv(x, None, 3, 1, "mbf_stem_dw", depthwise=True)
    feats = {}
    for g, (t, c, n, s, stage) in enumerate(BOTTLENECKS, start=1):
        for i in range(n):
            x = _bottleneck(x, t, _ch(c, width), s if i == 0 else 1, f"mbf_g{g}b{i + 1}")
        if stage:
            x = keras.layers.Activation("linear", name=f"mbf_{stage}_out")(x)
            feats[stage] = x
    x = _conv(x, _ch(512, width), 1, 1, "mbf_expand")
    feats["stage4"] = x = keras.layers.Activation("linear", name="mbf_stage4_out")(x)
    # GDConv: a depthwise convolution over the whole map, so each position keeps its own weight.
    x = keras.layers.DepthwiseConv2D(tuple(x.shape[1:3]), padding="valid", use_bias=False, name="mbf_gdconv")(x)
    x = keras.layers.BatchNormalization(**BN, name="mbf_gdconv_bn")(x)
    x = keras.layers.Conv2D(EMBEDDING, 1, use_bias=False, name="mbf_linear")(x)
    x = keras.layers.BatchNormalization(**BN, name="mbf_linear_bn")(x)
    feats["hint"] = feats["stage2"]
    feats["hidden"] = keras.layers.Flatten(name="hidden")(x)
    return feats
