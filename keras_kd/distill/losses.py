"""Losses as small tensor functions: the task losses and the formulas of every distillation method.

Per-example functions return one value per example ([batch]); the Distiller reduces them over the *global*
batch, which is what keeps gradients right under tf.distribute (a mean per replica would scale the loss
with the replica count). Relational formulas (RKD, DIST's intra-class term, the similarity matrix) compare
examples with each other and return one value for the batch they see. Which network output each formula
reads, its hyper-parameters and its registry name live in `distill/methods.py`.
"""
from __future__ import annotations

from typing import Sequence

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


# ---- formulas of the added distillation methods ----------------------------------------------------
# Teacher inputs are wrapped in stop_gradient here too: a formula never sends gradient to the teacher,
# whoever calls it.
_MASK = 1e4  # subtracted from a logit (already divided by τ) to take its class out of a softmax


def _kl_logspace(log_p, log_q):
    """KL(p ‖ q) per row from log-probabilities (no log(0): masked classes carry p = 0 exactly)."""
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def _dkd_parts(z, gt):
    """(log [p_target, 1 − p_target], log softmax over the non-target classes) of logits z / τ."""
    lse = tf.reduce_logsumexp(z, axis=-1, keepdims=True)
    others = tf.where(gt, z - _MASK, z)
    lse_others = tf.reduce_logsumexp(others, axis=-1, keepdims=True)
    log_target = tf.reduce_sum(tf.where(gt, z, 0.0), axis=-1, keepdims=True) - lse
    return tf.concat([log_target, lse_others - lse], axis=-1), others - lse_others


def dkd(student_logits, teacher_logits, labels, alpha: float = 1.0, beta: float = 8.0,
        temperature: float = 4.0):
    """Decoupled KD (Zhao et al., CVPR 2022): α·TCKD + β·NCKD, both × τ², per example.

    TCKD is the KL between the binary (target class, all others) distributions of teacher and student;
    NCKD the KL between their distributions over the non-target classes alone. Classic KD couples NCKD
    with the teacher's confidence (1 − p_target); DKD weighs it freely (β). Computed in log space
    (log-sum-exp), so a confident teacher (p_target = 1) gives no log(0).
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    gt = tf.one_hot(labels, tf.shape(student_logits)[-1], on_value=True, off_value=False, dtype=tf.bool)
    s_bin, s_nc = _dkd_parts(student_logits / temperature, gt)
    t_bin, t_nc = _dkd_parts(tf.stop_gradient(teacher_logits) / temperature, gt)
    tckd = _kl_logspace(t_bin, s_bin)
    nckd = _kl_logspace(t_nc, s_nc)
    return (alpha * tckd + beta * nckd) * temperature ** 2


def _pearson_rows(a, b, eps: float = 1e-8):
    """Pearson correlation of each row of a with the same row of b (DIST's formula, its ε included).

    The norm carries a 1e-24 under its square root so that a constant row (zero after centring) has a
    finite gradient; the value moves by less than float32 resolution.
    """
    a = a - tf.reduce_mean(a, axis=1, keepdims=True)
    b = b - tf.reduce_mean(b, axis=1, keepdims=True)
    norm = lambda x: tf.sqrt(tf.reduce_sum(tf.square(x), axis=1) + 1e-24)  # noqa: E731
    return tf.reduce_sum(a * b, axis=1) / (norm(a) * norm(b) + eps)


def dist(student_logits, teacher_logits, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0):
    """DIST (Huang et al., NeurIPS 2022): match relations of predictions, not their values.

    Inter-class: 1 − Pearson(P_S[i, :], P_T[i, :]) of each example's class probabilities (per example).
    Intra-class: 1 − mean over classes of Pearson(P_S[:, c], P_T[:, c]) across the batch (one value for
    the batch, added to every example). Both × τ², P = softmax(logits / τ). Returns [batch].
    """
    ys = tf.nn.softmax(student_logits / tau)
    yt = tf.nn.softmax(tf.stop_gradient(teacher_logits) / tau)
    inter = 1.0 - _pearson_rows(ys, yt)
    intra = 1.0 - tf.reduce_mean(_pearson_rows(tf.transpose(ys), tf.transpose(yt)))
    return tau ** 2 * (beta * inter + gamma * intra)


def attention_map(features, p: float = 2.0, size=None):
    """Zagoruyko & Komodakis' spatial attention of a [B, H, W, C] map: mean_c |F|^p, flattened, unit L2.

    Averaging over channels is what lets a narrow student match a wide teacher without an adapter. `size`
    (H', W'): the attention resized to that grid before normalization, for a map of another stride.
    """
    q = tf.reduce_mean(tf.pow(tf.abs(features), p), axis=-1, keepdims=True)
    if size is not None and tuple(q.shape[1:3]) != tuple(size):
        q = tf.image.resize(q, size, method="bilinear", antialias=True)
    q = tf.reshape(q, [tf.shape(q)[0], -1])
    return tf.math.l2_normalize(q, axis=1, epsilon=1e-24)  # x / max(‖x‖, 1e-12), as F.normalize


def attention_transfer(student_maps: Sequence, teacher_maps: Sequence, p: float = 2.0):
    """AT (ICLR 2017): Σ over feature maps of mean over positions of (Q_S/‖Q_S‖ − Q_T/‖Q_T‖)², per example.

    The per-position mean is the paper's β / (positions · batch) normalization with the batch mean left
    to the Distiller; the weight β (10³ in the paper and mdistiller) is applied by the caller.
    """
    total = 0.0
    for s, t in zip(student_maps, teacher_maps):
        # Architectures with other strides (MobileFaceNet's stage 4 is stride 16, ResNet's 32): the
        # student's attention is resized to the teacher's grid.
        diff = attention_map(s, p, size=t.shape[1:3]) - attention_map(tf.stop_gradient(t), p)
        total += tf.reduce_mean(tf.square(diff), axis=1)
    return total


def _pdist(e, eps: float = 1e-12):
    """Euclidean distances between rows, 0 on the diagonal (clipped at √ε elsewhere: a finite gradient)."""
    sq = tf.reduce_sum(tf.square(e), axis=1)
    d = tf.sqrt(tf.maximum(sq[:, None] + sq[None, :] - 2.0 * tf.matmul(e, e, transpose_b=True), eps))
    return d * (1.0 - tf.eye(tf.shape(e)[0], dtype=e.dtype))


def _smooth_l1(x):
    """Huber with δ = 1 (PyTorch's smooth_l1_loss, which RKD uses), elementwise."""
    ax = tf.abs(x)
    return tf.where(ax < 1.0, 0.5 * tf.square(x), ax - 0.5)


def _angles(e):
    """cos ∠(e_j − e_i, e_k − e_i) for all i, j, k: [B, B, B] (0 where a difference vector is 0)."""
    diff = e[None, :, :] - e[:, None, :]                       # [i, j] = e_j − e_i
    unit = tf.math.l2_normalize(diff, axis=2, epsilon=1e-24)
    return tf.matmul(unit, unit, transpose_b=True)


def rkd(student, teacher, distance_weight: float = 25.0, angle_weight: float = 50.0):
    """Relational KD (Park et al., CVPR 2019): one value for the batch of embeddings [B, D_S], [B, D_T].

    Distance term: smooth-L1 between the pairwise distance matrices, each divided by its mean non-zero
    distance (so the student's scale is free). Angle term: smooth-L1 between the cosines of all angles
    formed by triples of examples. Means over all B² pairs and B³ triples, as the reference code. Only
    relations are compared, so the widths need not match (no adapter).
    """
    s = tf.reshape(student, [tf.shape(student)[0], -1])
    t = tf.reshape(tf.stop_gradient(teacher), [tf.shape(teacher)[0], -1])

    def normalized(e):
        d = _pdist(e)
        positive = tf.cast(d > 0, d.dtype)
        return tf.math.divide_no_nan(d, tf.math.divide_no_nan(tf.reduce_sum(d), tf.reduce_sum(positive)))

    loss_d = tf.reduce_mean(_smooth_l1(normalized(s) - normalized(t)))
    loss_a = tf.reduce_mean(_smooth_l1(_angles(s) - _angles(t)))
    return distance_weight * loss_d + angle_weight * loss_a


# ---- face-embedding distillation -------------------------------------------------------------------
def _unit_rows(e):
    """Rows of e flattened to [B, D] and scaled to unit L2 (x / max(‖x‖, 1e-12): a zero row stays 0)."""
    return tf.math.l2_normalize(tf.reshape(e, [tf.shape(e)[0], -1]), axis=1, epsilon=1e-24)


def embedding_cosine(student, teacher):
    """1 − cos(S_i, T_i) per example: the student's embedding pointed where the teacher's points.

    Face embeddings are compared by cosine (verification, identification), so only their direction matters:
    unlike `mean_sq`, the norm of either embedding is left free. The widths must match (the registry's
    `emb_cos` goes through a dense projection when the student is narrower).
    """
    s, t = _unit_rows(student), _unit_rows(tf.stop_gradient(teacher))
    return 1.0 - tf.reduce_sum(s * t, axis=1)


def similarity_matrix(student, teacher):
    """Mean over pairs i ≠ j of (cos_S(i, j) − cos_T(i, j))²: one value for the batch.

    cos_X is the B×B matrix of cosine similarities between the batch's embeddings: the teacher's pairwise
    geometry, which is what verification measures (same person or not by the cosine of two faces). The
    B×B matrices match whatever the widths, so no projection is needed, and the loss is unchanged by any
    rotation or uniform rescaling of the student's embedding space. It is the relation-distillation family
    of CoupleFace (Liu et al., AAAI 2022) and EKD (Huang et al., CVPR 2022) in its plain form, an L2 between
    similarity matrices, and neither paper's exact loss (CoupleFace mines informative pairs; EKD weights
    the pairs that matter at the evaluation's thresholds). The diagonal (always 1) is left out; a batch of
    one gives 0.
    """
    s, t = _unit_rows(student), _unit_rows(tf.stop_gradient(teacher))
    diff = tf.matmul(s, s, transpose_b=True) - tf.matmul(t, t, transpose_b=True)
    b = tf.cast(tf.shape(s)[0], s.dtype)
    off = 1.0 - tf.eye(tf.shape(s)[0], dtype=s.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(off * tf.square(diff)), b * (b - 1.0))
