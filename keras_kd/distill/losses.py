"""Losses as small per-example functions, and the registry of distillation targets.

Every function returns one value per example ([batch]); the Distiller reduces them over the *global*
batch, which is what keeps gradients right under tf.distribute (a mean per replica would scale the loss
with the replica count).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict

from keras_kd.keras import tf


# ---- task losses -----------------------------------------------------------------------------------
def label_ce(labels, logits):
    """H(P_S, y): softmax cross-entropy on identity labels."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)


LANDMARK_UNITS = 10.0  # the landmark head predicts in these units too (models/heads.py)


def landmark_l2(true, pred):
    """Eq. 6's Euclidean loss, averaged over the 10 coordinates, in units of 1/10 of the crop.

    Both choices are about SGD at the paper's learning rates. The mean, not the sum: with 2048-d features
    feeding the regression layer, the summed loss overshoots and diverges within three steps. Tenths of the
    crop, not crop units: errors of a few hundredths of the crop give the trunk almost no gradient; the
    head predicts in the same units (then rescales), so its curvature, and stability, are unchanged.
    """
    diff = LANDMARK_UNITS * tf.reshape(pred - true, [tf.shape(pred)[0], -1])
    return tf.reduce_mean(tf.square(diff), axis=-1)


def pairwise_sq_dist(emb):
    """‖a − b‖² for all pairs of rows, clipped at 0 against round-off."""
    sq = tf.reduce_sum(tf.square(emb), axis=1)
    return tf.maximum(sq[:, None] - 2.0 * tf.matmul(emb, emb, transpose_b=True) + sq[None, :], 0.0)


def triplet(labels, emb, margin: float = 0.4, mining: str = "batch_hard"):
    """Eq. 8-9: [‖K_a − K_p‖² − ‖K_a − K_n‖² + λ]_+ with online mining inside the batch.

    batch_hard: per anchor, its farthest positive against its nearest negative.
    semi_hard:  per (anchor, positive) pair, the nearest negative farther than the positive (FaceNet);
                the farthest negative when none is (as tensorflow-addons did); averaged over the pairs.
    An anchor with no positive or no negative in the batch contributes 0.
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    d = pairwise_sq_dist(emb)
    same = tf.equal(labels[:, None], labels[None, :])
    eye = tf.eye(tf.shape(labels)[0], dtype=tf.bool)
    pos = tf.logical_and(same, tf.logical_not(eye))
    neg = tf.logical_not(same)
    valid = tf.logical_and(tf.reduce_any(pos, 1), tf.reduce_any(neg, 1))
    big = tf.reduce_max(d) + 1.0
    if mining == "batch_hard":
        hardest_pos = tf.reduce_max(tf.where(pos, d, 0.0), axis=1)
        hardest_neg = tf.reduce_min(tf.where(neg, d, big), axis=1)
        loss = tf.nn.relu(hardest_pos - hardest_neg + margin)
    elif mining == "semi_hard":
        d_ap = d[:, :, None]                     # [a, p, 1]
        d_an = d[:, None, :]                     # [a, 1, n]
        negm = neg[:, None, :]
        outside = tf.logical_and(negm, d_an > d_ap)
        semi = tf.reduce_min(tf.where(outside, d_an, big), axis=2)           # [a, p]
        far = tf.reduce_max(tf.where(neg, d, -1.0), axis=1)[:, None]          # [a, 1]
        chosen = tf.where(tf.reduce_any(outside, axis=2), semi, far)
        per_pair = tf.where(pos, tf.nn.relu(d - chosen + margin), 0.0)
        n_pos = tf.reduce_sum(tf.cast(pos, d.dtype), axis=1)
        loss = tf.math.divide_no_nan(tf.reduce_sum(per_pair, axis=1), n_pos)
    else:
        raise ValueError(f"mining must be batch_hard or semi_hard, got {mining!r}")
    return tf.where(valid, loss, 0.0)


# ---- distillation targets --------------------------------------------------------------------------
def soft_kd(student_logits, teacher_logits, temperature: float = 3.0, tau2: bool = False):
    """Eq. 2's soft-target term H(P^τ_T, P^τ_S), computed as KL(P^τ_T ‖ P^τ_S).

    KL differs from the paper's cross-entropy only by the teacher's entropy, a constant for the student,
    so the gradients are the same and the loss is 0 when the student matches the teacher. Hinton et al.
    scale by τ² to keep gradient magnitudes independent of τ; the paper does not (`tau2=False`).
    """
    t = tf.stop_gradient(tf.nn.softmax(teacher_logits / temperature))
    log_s = tf.nn.log_softmax(student_logits / temperature)
    kl = tf.reduce_sum(t * (tf.math.log(t + 1e-12) - log_s), axis=-1)
    return kl * (temperature ** 2) if tau2 else kl


def mean_sq(student, teacher):
    """‖S − T‖² averaged over feature dimensions: the paper's hidden/logit L2 targets.

    The paper writes ‖K_S − K_T‖² without a scale; averaging over dimensions keeps β=1 comparable to the
    task loss whatever the layer's width.
    """
    diff = tf.reshape(student - tf.stop_gradient(teacher), [tf.shape(student)[0], -1])
    return tf.reduce_mean(tf.square(diff), axis=-1)


@dataclasses.dataclass(frozen=True)
class Target:
    """A distillation target: which output of each network it compares, and how.

    `adapter` says how a student feature is mapped to the teacher's width when they differ: "dense" for
    vectors, "conv1x1" for feature maps (FitNet's regressor), None for logits (same class count).
    """

    name: str
    key: str
    fn: Callable
    adapter: str | None = None
    uses_temperature: bool = False


TARGETS: Dict[str, Target] = {
    "soft": Target("soft", "logits", soft_kd, uses_temperature=True),
    "logits": Target("logits", "logits", mean_sq),
    "hidden": Target("hidden", "hidden", mean_sq, adapter="dense"),
    "hint": Target("hint", "hint", mean_sq, adapter="conv1x1"),
}


def parse_kd(spec: str) -> list:
    """'soft:1.0,hidden:0.5' → [('soft', 1.0), ('hidden', 0.5)]; weight 1 when omitted, 0-weights dropped."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, w = part.partition(":")
        if name not in TARGETS:
            raise ValueError(f"unknown distillation target {name!r}; choose from {', '.join(TARGETS)}")
        weight = float(w) if w else 1.0
        if weight:
            out.append((name, weight))
    return out
