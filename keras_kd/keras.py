"""The one place keras-kd imports Keras.

keras-kd uses the Keras 2 API from ``tf_keras`` because tensorflow-model-optimization (QAT, pruning) and
``fit`` under MultiWorkerMirroredStrategy work only with it today. ``TF_USE_LEGACY_KERAS=1`` must be set
before TensorFlow first loads Keras, so every module imports ``keras`` from here and nowhere else. Importing
it also installs keras-kd's Conv2D input gradient (``keras_kd/conv_grad.py``).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from keras_kd import conv_grad  # noqa: E402

# Conv2D's input gradient through forward convolutions: up to 3× faster ResNet-50 train steps on CPUs
# without AVX-512 (python -m bench.conv_grad), where no GPU is visible; KERAS_KD_CONV_GRAD=tf|fast|auto.
conv_grad.install()

__all__ = ["keras", "tf"]
