"""The one place keras-kd imports Keras.

keras-kd uses the Keras 2 API from ``tf_keras`` because tensorflow-model-optimization (QAT, pruning) and
``fit`` under MultiWorkerMirroredStrategy work only with it today. ``TF_USE_LEGACY_KERAS=1`` must be set
before TensorFlow first loads Keras, so every module imports ``keras`` from here and nowhere else. So must
TensorFlow's thread-pool sizes, which it reads once: on a machine of two cores, one thread per op
(``cpu.thread_defaults``; a variable already set wins). Importing it changes nothing else: keras-kd's Conv2D
input gradient is installed where training starts (``keras_kd/conv_grad.py``).
"""
import os

from keras_kd import cpu

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
for _name, _value in cpu.thread_defaults().items():
    os.environ.setdefault(_name, _value)

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["keras", "tf"]
