"""MobileNetV3 Small and Large (Howard et al., ICCV 2019) from keras.applications, without pretrained
weights, on the project's [0, 1] pixels (rescaled to [-1, 1] as the application expects).

The application's layers are built on this model's input, so the result is one flat functional model (no
nested application model): tfmot wraps its layers and weights move between tasks by layer name, which
keras.applications fixes ("expanded_conv_5/Add"). `width` is the application's `alpha`. Stage maps are
the last block output at strides 4, 8, 16, 32, as ResNet's.
"""
from __future__ import annotations

from typing import Dict

from keras_kd.keras import keras, tf
from keras_kd.models.network import BN

FEATURE_LAYERS_SMALL: Dict[str, str] = {
    "stage1": "expanded_conv/project/BatchNorm", "stage2": "expanded_conv_2/Add",
    "stage3": "expanded_conv_7/Add", "stage4": "expanded_conv_10/Add",
    "hint": "expanded_conv_2/Add", "hidden": "hidden",
}
FEATURE_LAYERS_LARGE: Dict[str, str] = {
    "stage1": "expanded_conv_2/Add", "stage2": "expanded_conv_5/Add",
    "stage3": "expanded_conv_11/Add", "stage4": "expanded_conv_14/Add",
    "hint": "expanded_conv_5/Add", "hidden": "hidden",
}


def _backbone(application, feature_layers, images, width: float) -> Dict[str, tf.Tensor]:
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="mv3_input_scale")(images)
    app = application(input_tensor=x, include_top=False, weights=None, alpha=float(width),
                      include_preprocessing=False)
    # The application's batch norm averages its statistics with momentum 0.999: after a few hundred steps
    # the moving statistics are still mostly their initial values and inference is at chance. ResNet's 0.9.
    for layer in app.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN["momentum"]
    feats = {k: app.get_layer(v).output for k, v in feature_layers.items() if k != "hidden"}
    feats["hidden"] = keras.layers.GlobalAveragePooling2D(name="hidden")(app.output)
    return feats


def backbone_small(images, width_divisor: int = 1, width: float = 1.0) -> Dict[str, tf.Tensor]:
    return _backbone(keras.applications.MobileNetV3Small, FEATURE_LAYERS_SMALL, images, width)


def backbone_large(images, width_divisor: int = 1, width: float = 1.0) -> Dict[str, tf.Tensor]:
    return _backbone(keras.applications.MobileNetV3Large, FEATURE_LAYERS_LARGE, images, width)
