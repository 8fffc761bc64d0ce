"""Task heads. Each reads the trunk's named features and returns (output, K): K is the layer that feeds
the head's final fully-connected layer, the paper's hidden layer and the β target of transfer distillation.

The classification and embedding heads read the pooled features (K = "hidden", as the paper). Landmarks
come in three kinds: the paper's `pooled` regression R = fc(K) on the pooled features; the `spatial` one
(the quick preset's default), which reads the stride-8 map of SPATIAL_STAGE: a 1×1 convolution to
SPATIAL_CHANNELS channels, flattened, is K, and fc(K) the landmarks; and `heatmap` (soft-argmax). Pooling
throws away where on the map a feature fired, which is most of what a landmark's position is; the last
stage's 2×2 map at 48 px keeps too little of it (docs/recipe.md, section 7, measures each). SPATIAL_CHANNELS
is the same at every width, so teacher and student K match without an adapter.
"""
from __future__ import annotations

from keras_kd.data.example import NUM_LANDMARKS
from keras_kd.distill.losses import LANDMARK_UNITS
from keras_kd.keras import keras, tf


def logits(hidden, num_classes: int):
    """Identity classification logits; kept on every network as the source of soft targets."""
    return keras.layers.Dense(num_classes, name="logits")(hidden)


SPATIAL_CHANNELS = 32
SPATIAL_STAGE = "stage2"  # stride 8: 6×6 at 48 px, 28×28 at 224 px
HEATMAP_CHANNELS = 64
LANDMARK_HEADS = ("heatmap", "spatial", "pooled")


class SoftArgmax(keras.layers.Layer):
    """Heat maps [B, H, W, N] → the expected (x, y) of each map's softmax, in crop units [0, 1]."""

    def call(self, maps):
        shape = tf.shape(maps)
        h, w, n = shape[1], shape[2], shape[3]
        p = tf.nn.softmax(tf.reshape(tf.transpose(maps, [0, 3, 1, 2]), [shape[0], n, h * w]), axis=-1)
        xs = (tf.cast(tf.range(w), tf.float32) + 0.5) / tf.cast(w, tf.float32)
        ys = (tf.cast(tf.range(h), tf.float32) + 0.5) / tf.cast(h, tf.float32)
        grid = tf.stack([tf.tile(xs, [h]), tf.repeat(ys, w)], axis=-1)  # [H*W, 2], row-major
        return tf.einsum("bnk,kc->bnc", p, grid)


def landmarks(feats, landmark_head: str = "pooled", **_):
    """5 landmarks (x, y) in crop-normalized coordinates [0, 1], R = fc(K) as the paper's Eq. 6."""
    if landmark_head == "heatmap":
        x = keras.layers.Conv2D(HEATMAP_CHANNELS, 3, padding="same", use_bias=False, name="landmarks_conv")(
            feats["stage2"])
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="landmarks_conv_bn")(x)
        x = keras.layers.ReLU(name="landmarks_conv_relu")(x)
        maps = keras.layers.Conv2D(NUM_LANDMARKS, 1, name="landmarks_maps")(x)
        k = keras.layers.Flatten(name="landmarks_k")(maps)
        return SoftArgmax(name="landmarks")(maps), k
    if landmark_head == "spatial":
        x = keras.layers.Conv2D(SPATIAL_CHANNELS, 1, name="landmarks_reduce")(feats[SPATIAL_STAGE])
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="landmarks_reduce_bn")(x)
        x = keras.layers.ReLU(name="landmarks_reduce_relu")(x)
        k = keras.layers.Flatten(name="landmarks_k")(x)
    elif landmark_head == "pooled":
        k = feats["hidden"]
    else:
        raise ValueError(f"landmark_head must be one of {', '.join(LANDMARK_HEADS)}, got {landmark_head!r}")
    # The layer predicts offsets from the crop centre in 1/LANDMARK_UNITS of the crop, then a fixed
    # rescale maps them to crop coordinates (why: distill.losses.landmark_l2). Zero-initialized, it starts
    # at the crop centre rather than at errors of several crop widths.
    out = keras.layers.Dense(2 * NUM_LANDMARKS, kernel_initializer="zeros", name="landmarks_fc")(k)
    out = keras.layers.Rescaling(1.0 / LANDMARK_UNITS, offset=0.5, name="landmarks_units")(out)
    return keras.layers.Reshape((NUM_LANDMARKS, 2), name="landmarks")(out), k


def embedding(feats, embedding_dim: int = 0, **_):
    """Unit-length face embedding of K (optionally projected): the triplet margin is only meaningful
    on a fixed scale, and unit length makes squared distances lie in [0, 4]."""
    x = feats["hidden"]
    if embedding_dim:
        x = keras.layers.Dense(embedding_dim, name="embedding_fc")(x)
    return keras.layers.UnitNormalization(name="embedding")(x), feats["hidden"]


HEADS = {"landmarks": landmarks, "embedding": embedding}
