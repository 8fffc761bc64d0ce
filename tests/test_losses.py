"""Task losses and the paper's KD formulas against hand-computed values (the added methods' formulas
and the registry: test_kd_methods.py)."""
import math

import numpy as np
import pytest

from keras_kd.distill import losses
from keras_kd.keras import tf

LN2, LN3 = math.log(2.0), math.log(3.0)


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, np.float64)


# ---- label_ce ----------------------------------------------------------------------------------------
def test_label_ce_hand_values():
    # Row 0: logits (0, 0, ln 2) → softmax = (1, 1, 2) / 4; label 2 → −ln(1/2) = ln 2.
    # Row 1: the same logits; label 0 → −ln(1/4) = ln 4.
    # Row 2: logits (ln 3, 0, 0) → softmax = (3, 1, 1) / 5; label 1 → −ln(1/5) = ln 5.
    logits = tf.constant([[0.0, 0.0, LN2], [0.0, 0.0, LN2], [LN3, 0.0, 0.0]])
    got = losses.label_ce(tf.constant([2, 0, 1], tf.int64), logits)  # int64 labels are cast
    assert got.shape == (3,)
    np.testing.assert_allclose(_np(got), [LN2, math.log(4.0), math.log(5.0)], rtol=1e-6)


def test_label_ce_two_classes():
    # logits (1, 1): p = (1/2, 1/2) → ln 2 whatever the label; logits (0, ln 3) label 1: p1 = 3/4 → ln(4/3).
    got = losses.label_ce(tf.constant([0, 1]), tf.constant([[1.0, 1.0], [0.0, LN3]]))
    np.testing.assert_allclose(_np(got), [LN2, math.log(4.0 / 3.0)], rtol=1e-6)


# ---- soft_kd -----------------------------------------------------------------------------------------
# Teacher logits (0, 0, 3 ln 2) at τ = 3: softmax((0, 0, ln 2)) = p = (1/4, 1/4, 1/2).
# Student logits (0, 0, 0): q = (1/3, 1/3, 1/3).
#   KL(p ‖ q) = 2 · 1/4 · ln((1/4)/(1/3)) + 1/2 · ln((1/2)/(1/3)) = 1/2 ln(3/4) + 1/2 ln(3/2) = 1/2 ln(9/8).
# Row 2 swaps the roles: teacher uniform (1, 1, 1) → p = 1/3 each; student (0, 0, 3 ln 2) → q = (1/4, 1/4, 1/2).
#   KL(p ‖ q) = 1/3 (ln(4/3) + ln(4/3) + ln(2/3)) = 1/3 ln(32/27).
TEACHER = [[0.0, 0.0, 3 * LN2], [1.0, 1.0, 1.0]]
STUDENT = [[0.0, 0.0, 0.0], [0.0, 0.0, 3 * LN2]]
KL = [0.5 * math.log(9 / 8), math.log(32 / 27) / 3]


def test_soft_kd_hand_values_at_temperature_3():
    got = losses.soft_kd(tf.constant(STUDENT), tf.constant(TEACHER), temperature=3.0)
    assert got.shape == (2,)
    np.testing.assert_allclose(_np(got), KL, rtol=1e-5)


def test_soft_kd_is_zero_when_student_matches_teacher():
    logits = tf.constant([[2.0, -1.0, 0.5, 7.0], [0.0, 0.0, 0.0, 0.0], [-3.0, 4.0, 1.0, 1.0]])
    got = _np(losses.soft_kd(logits, logits, temperature=3.0))
    np.testing.assert_allclose(got, 0.0, atol=1e-6)
    # ... and positive whenever they differ (KL ≥ 0, = 0 only at equality).
    assert (_np(losses.soft_kd(logits + tf.constant([[1.0, 0, 0, 0]]), logits)) > 1e-4).all()


def test_soft_kd_tau2_scales_by_nine():
    s, t = tf.constant(STUDENT), tf.constant(TEACHER)
    plain = _np(losses.soft_kd(s, t, temperature=3.0, tau2=False))
    scaled = _np(losses.soft_kd(s, t, temperature=3.0, tau2=True))
    np.testing.assert_allclose(scaled, 9.0 * plain, rtol=1e-6)
    np.testing.assert_allclose(scaled, 9.0 * np.asarray(KL), rtol=1e-5)


def test_soft_kd_gradients_reach_the_student_only():
    s, t = tf.constant(STUDENT), tf.constant(TEACHER)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([s, t])
        loss = tf.reduce_sum(losses.soft_kd(s, t, temperature=3.0))
    g_t = tape.gradient(loss, t)
    assert g_t is None or not np.any(_np(g_t))  # stop_gradient on the teacher
    # d KL(p ‖ softmax(s/τ)) / d s = (q − p) / τ.
    p = np.array([[0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    q = np.array([[1 / 3, 1 / 3, 1 / 3], [0.25, 0.25, 0.5]])
    np.testing.assert_allclose(_np(tape.gradient(loss, s)), (q - p) / 3.0, atol=1e-6)


def test_soft_kd_default_temperature_is_3():
    s, t = tf.constant(STUDENT), tf.constant(TEACHER)
    np.testing.assert_allclose(_np(losses.soft_kd(s, t)), KL, rtol=1e-5)


# ---- mean_sq / landmark_l2 ---------------------------------------------------------------------------
def test_mean_sq_is_a_mean_over_dims_per_example():
    # Row 0: (1−0)² + (2−0)² = 5 over 2 dims → 2.5.  Row 1: (3−3)² + (4−6)² = 4 over 2 dims → 2.
    s = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    t = tf.constant([[0.0, 0.0], [3.0, 6.0]])
    np.testing.assert_allclose(_np(losses.mean_sq(s, t)), [2.5, 2.0], rtol=1e-6)


def test_mean_sq_on_feature_maps_and_stops_teacher_gradient():
    # [2, 2, 2, 1] maps: example 0 differs by 1 at one of 4 cells → 1/4; example 1 by 2 everywhere → 4.
    s = np.zeros((2, 2, 2, 1), np.float32)
    t = np.zeros((2, 2, 2, 1), np.float32)
    t[0, 1, 0, 0] = 1.0
    t[1] += 2.0
    s, t = tf.constant(s), tf.constant(t)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([s, t])
        value = losses.mean_sq(s, t)
        total = tf.reduce_sum(value)
    np.testing.assert_allclose(_np(value), [0.25, 4.0], rtol=1e-6)
    g_t = tape.gradient(total, t)
    assert g_t is None or not np.any(_np(g_t))
    # d/ds mean((s − t)²) = 2 (s − t) / 4
    np.testing.assert_allclose(_np(tape.gradient(total, s)), 2 * (_np(s) - _np(t)) / 4, atol=1e-7)


def test_landmark_l2_is_a_mean_over_the_10_coordinates_in_tenths_of_the_crop():
    assert losses.LANDMARK_UNITS == 10.0
    true = np.zeros((2, 5, 2), np.float32)
    pred = np.zeros((2, 5, 2), np.float32)
    # Errors are measured in 1/10 of the crop: an error of e crop widths counts as (10 e)².
    pred[0, 0, 0] = 0.1         # example 0: one coordinate off by 0.1 crop = 1 unit → 1² / 10 = 0.1
    pred[1] = 0.05              # example 1: all 10 off by 0.5 unit → 0.25 each
    pred[1, 4, 1] = 0.15        # ... one of them off by 1.5 units instead: (9 · 0.25 + 2.25) / 10 = 0.45
    got = _np(losses.landmark_l2(tf.constant(true), tf.constant(pred)))
    np.testing.assert_allclose(got, [0.1, 0.45], rtol=1e-5)
    # Symmetric in its arguments, and 0 on a perfect prediction.
    np.testing.assert_allclose(_np(losses.landmark_l2(tf.constant(pred), tf.constant(true))), got, rtol=1e-6)
    np.testing.assert_array_equal(_np(losses.landmark_l2(tf.constant(pred), tf.constant(pred))), [0, 0])


# ---- triplet -----------------------------------------------------------------------------------------
# Four 2-D points, identities 0, 0, 1, 1:
#   p0 = (0, 0)  p1 = (1, 0)  p2 = (1, 0.5)  p3 = (1.5, 1)
# squared distances:
#   d01 = 1      d02 = 1 + 0.25 = 1.25     d03 = 2.25 + 1 = 3.25
#   d12 = 0.25   d13 = 0.25 + 1 = 1.25     d23 = 0.25 + 0.25 = 0.5
# batch_hard (farthest positive vs nearest negative, margin 0.4):
#   a0: 1    − min(1.25, 3.25) + 0.4 =  0.15
#   a1: 1    − min(0.25, 1.25) + 0.4 =  1.15
#   a2: 0.5  − min(1.25, 0.25) + 0.4 =  0.65
#   a3: 0.5  − min(3.25, 1.25) + 0.4 = −0.35 → 0
# semi_hard (nearest negative farther than the positive; one positive each):
#   a0 (d_ap 1):   negatives > 1: 1.25, 3.25 → 1.25 → 1 − 1.25 + 0.4 = 0.15
#   a1 (d_ap 1):   0.25 is closer, skipped; 1.25 → 0.15
#   a2 (d_ap 0.5): 0.25 is closer, skipped; 1.25 → 0.5 − 1.25 + 0.4 < 0 → 0
#   a3 (d_ap 0.5): 1.25 → 0
POINTS = [[0.0, 0.0], [1.0, 0.0], [1.0, 0.5], [1.5, 1.0]]
LABELS = [0, 0, 1, 1]


def _triplet(labels, emb, mining, margin=0.4):
    return _np(losses.triplet(tf.constant(labels), tf.constant(emb, tf.float32), margin, mining))


def test_pairwise_sq_dist_hand_values():
    expected = [[0, 1, 1.25, 3.25], [1, 0, 0.25, 1.25], [1.25, 0.25, 0, 0.5], [3.25, 1.25, 0.5, 0]]
    np.testing.assert_allclose(_np(losses.pairwise_sq_dist(tf.constant(POINTS))), expected, atol=1e-6)


def test_triplet_batch_hard_hand_values():
    np.testing.assert_allclose(_triplet(LABELS, POINTS, "batch_hard"), [0.15, 1.15, 0.65, 0.0], atol=1e-6)


def test_triplet_semi_hard_hand_values():
    np.testing.assert_allclose(_triplet(LABELS, POINTS, "semi_hard"), [0.15, 0.15, 0.0, 0.0], atol=1e-6)


def test_triplet_semi_hard_falls_back_to_the_farthest_negative():
    # p0 = (0, 0), p1 = (2, 0) identity 0; p2 = (1, 0), p3 = (1, 1) identity 1.
    #   d01 = 4, d02 = 1, d03 = 2, d12 = 1, d13 = 2, d23 = 1.
    # a0: d_ap 4, negatives 1, 2, none farther → farthest 2: 4 − 2 + 0.4 = 2.4 (batch_hard: 4 − 1 + 0.4 = 3.4)
    # a1: same by symmetry: 2.4 (3.4)
    # a2: d_ap 1, negatives 1, 1, none farther → farthest 1: 1 − 1 + 0.4 = 0.4 (batch_hard 0.4)
    # a3: d_ap 1, negatives 2, 2 → 2: 1 − 2 + 0.4 < 0 → 0 (batch_hard 0)
    pts, labels = [[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 1.0]], [0, 0, 1, 1]
    np.testing.assert_allclose(_triplet(labels, pts, "semi_hard"), [2.4, 2.4, 0.4, 0.0], atol=1e-6)
    np.testing.assert_allclose(_triplet(labels, pts, "batch_hard"), [3.4, 3.4, 0.4, 0.0], atol=1e-6)


def test_triplet_semi_hard_averages_over_positives():
    # 1-D points on the x axis: identity 0 at 0, 1, 2; identity 1 at 2.5.
    # Anchor 0: positives d = 1 (x=1) and 4 (x=2); the negative d = 6.25.
    #   pair (0, 1): 1 − 6.25 + 0.4 < 0 → 0;  pair (0, 2): 4 − 6.25 + 0.4 < 0 → 0 → mean 0
    # Anchor 1: positives d = 1, 1; negative 2.25 → 1 − 2.25 + 0.4 < 0 twice → 0
    # Anchor 2 (x=2): positives d = 4 (x=0), 1 (x=1); negative 0.25 (never farther) → fallback 0.25:
    #   4 − 0.25 + 0.4 = 4.15 and 1 − 0.25 + 0.4 = 1.15 → mean 2.65   (batch_hard: 4 − 0.25 + 0.4 = 4.15)
    # Anchor 3: no positive → 0.
    pts = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [2.5, 0.0]]
    labels = [0, 0, 0, 1]
    np.testing.assert_allclose(_triplet(labels, pts, "semi_hard"), [0.0, 0.0, 2.65, 0.0], atol=1e-6)
    np.testing.assert_allclose(_triplet(labels, pts, "batch_hard"), [0.0, 0.0, 4.15, 0.0], atol=1e-6)


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_anchor_without_positive_contributes_zero(mining):
    # Identities 0, 0, 1, 2: anchors 2 and 3 have no positive. Anchors 0 and 1 keep their values:
    # same points as POINTS, so d01 = 1; negatives of a0: 1.25, 3.25; of a1: 0.25, 1.25.
    #   batch_hard: a0 = 1 − 1.25 + 0.4 = 0.15, a1 = 1 − 0.25 + 0.4 = 1.15
    #   semi_hard:  a0 = 0.15, a1 = 1 − 1.25 + 0.4 = 0.15
    got = _triplet([0, 0, 1, 2], POINTS, mining)
    expected = {"batch_hard": [0.15, 1.15, 0.0, 0.0], "semi_hard": [0.15, 0.15, 0.0, 0.0]}[mining]
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_single_identity_gives_zeros(mining):
    # No negatives anywhere: every anchor is invalid (a loss of margin + d_ap would otherwise appear).
    got = _triplet([3, 3, 3, 3], POINTS, mining)
    np.testing.assert_array_equal(got, np.zeros(4))


def test_triplet_margin_is_applied_and_mining_is_validated():
    # Margin 0 on POINTS: batch_hard a0 = 1 − 1.25 < 0 → 0, a1 = 0.75, a2 = 0.25, a3 = 0.
    np.testing.assert_allclose(_triplet(LABELS, POINTS, "batch_hard", margin=0.0), [0, 0.75, 0.25, 0], atol=1e-6)
    with pytest.raises(ValueError, match="batch_hard or semi_hard"):
        losses.triplet(tf.constant(LABELS), tf.constant(POINTS), 0.4, "hardest")


def _reference_triplet(labels, emb, margin, mining):
    """A loop-by-loop reading of the docstring: the vectorized version must agree."""
    n = len(labels)
    d = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    out = np.zeros(n)
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "batch_hard":
            out[a] = max(0.0, max(d[a, pos]) - min(d[a, neg]) + margin)
        else:
            vals = []
            for p in pos:
                farther = [d[a, q] for q in neg if d[a, q] > d[a, p]]
                chosen = min(farther) if farther else max(d[a, neg])
                vals.append(max(0.0, d[a, p] - chosen + margin))
            out[a] = np.mean(vals)
    return out


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_matches_a_loop_reference_on_random_batches(mining):
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 3, 8)
        emb = rng.normal(size=(8, 4))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb.astype(np.float32)
        got = _triplet(labels.tolist(), emb, mining)
        np.testing.assert_allclose(got, _reference_triplet(labels, emb.astype(np.float64), 0.4, mining),
                                   atol=1e-5)
