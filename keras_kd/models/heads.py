"""Task heads on the hidden layer K (the pooled features that feed the final fully-connected layers)."""
from __future__ import annotations

from keras_kd.data.example import NUM_LANDMARKS
from keras_kd.distill.losses import LANDMARK_UNITS
from keras_kd.keras import keras


def logits(hidden, num_classes: int):
    """Identity classification logits; kept on every network as the source of soft targets."""
    return keras.layers.Dense(num_classes, name="logits")(hidden)


def landmarks(hidden, **_):
    """5 landmarks (x, y) in crop-normalized coordinates [0, 1], R = fc(K) as the paper's Eq. 6."""
    # The layer predicts offsets from the crop centre in 1/LANDMARK_UNITS of the crop, then a fixed
    # rescale maps them to crop coordinates (why: distill.losses.landmark_l2). Zero-initialized, it starts
    # at the crop centre rather than at errors of several crop widths.
    out = keras.layers.Dense(2 * NUM_LANDMARKS, kernel_initializer="zeros", name="landmarks_fc")(hidden)
    out = keras.layers.Rescaling(1.0 / LANDMARK_UNITS, offset=0.5, name="landmarks_units")(out)
    return keras.layers.Reshape((NUM_LANDMARKS, 2), name="landmarks")(out)


def embedding(hidden, embedding_dim: int = 0, **_):
    """Unit-length face embedding of K (optionally projected): the triplet margin is only meaningful
    on a fixed scale, and unit length makes squared distances lie in [0, 4]."""
    x = hidden
    if embedding_dim:
        x = keras.layers.Dense(embedding_dim, name="embedding_fc")(x)
    return keras.layers.UnitNormalization(name="embedding")(x)


HEADS = {"landmarks": landmarks, "embedding": embedding}
