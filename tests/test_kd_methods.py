"""The added distillation methods: formulas against hand values and independent numpy references, the
registry and its flags, the Distiller composing them (student-only gradients, zero at equality, feature
layers), the plans and the methods table."""
import math
import textwrap

import numpy as np
import pytest
from absl import flags

from conftest import run_two_cpu_script
from keras_kd import results
from keras_kd.config import Config
from keras_kd.distill import losses, methods
from keras_kd.distill.distiller import Distiller
from keras_kd.keras import keras, tf
from keras_kd.models import archs, resnet
from keras_kd.stages import Runner, StageError
from keras_kd.tasks import TASKS

LN2, LN3 = math.log(2.0), math.log(3.0)
SIZE, CLASSES = 32, 4


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, np.float64)


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _no_teacher_gradient(fn, s, t):
    """fn(s, t) differentiated: the teacher input gets no gradient, the student one does."""
    s, t = tf.constant(s, tf.float32), tf.constant(t, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([s, t])
        value = tf.reduce_sum(fn(s, t))
    g_t, g_s = tape.gradient(value, t), tape.gradient(value, s)
    assert g_t is None or not np.any(_np(g_t))
    assert g_s is not None and np.all(np.isfinite(_np(g_s))) and np.any(_np(g_s))


# ---- DKD ---------------------------------------------------------------------------------------------
# 3 classes, target class 0, T = 1. Student logits (0, 0, 0): p = (1/3, 1/3, 1/3) → binary (1/3, 2/3),
# non-target (1/2, 1/2).
#   Row 0, teacher (ln 2, 0, ln 3): p = (2, 1, 3)/6 → binary (1/3, 2/3) = the student's → TCKD = 0;
#          non-target (1/4, 3/4) → NCKD = 1/4 ln(1/2) + 3/4 ln(3/2).
#   Row 1, teacher (ln 2, 0, 0): p = (2, 1, 1)/4 → binary (1/2, 1/2) → TCKD = 1/2 ln(3/2) + 1/2 ln(3/4)
#          = 1/2 ln(9/8); non-target (1/2, 1/2) = the student's → NCKD = 0.
DKD_S = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
DKD_T = [[LN2, 0.0, LN3], [LN2, 0.0, 0.0]]
NCKD0 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
TCKD1 = 0.5 * math.log(9 / 8)


def test_dkd_hand_values():
    got = _np(losses.dkd(tf.constant(DKD_S), tf.constant(DKD_T), tf.constant([0, 0]), alpha=1.0, beta=8.0,
                         temperature=1.0))
    np.testing.assert_allclose(got, [8 * NCKD0, TCKD1], rtol=1e-5)
    # α and β weigh the two parts separately.
    got = _np(losses.dkd(tf.constant(DKD_S), tf.constant(DKD_T), tf.constant([0, 0]), 0.5, 2.0, 1.0))
    np.testing.assert_allclose(got, [2 * NCKD0, 0.5 * TCKD1], rtol=1e-5)


def test_dkd_temperature_divides_logits_and_scales_by_tau_squared():
    # Logits × 2 at T = 2 give the same distributions as at T = 1, and the loss × 4.
    got = _np(losses.dkd(tf.constant(DKD_S), 2 * tf.constant(DKD_T), tf.constant([0, 0]), 1.0, 8.0, 2.0))
    np.testing.assert_allclose(got, [4 * 8 * NCKD0, 4 * TCKD1], rtol=1e-5)


def _reference_dkd(zs, zt, labels, alpha, beta, temp):
    """Zhao et al.'s definition, row by row, with explicit distributions."""
    out = []
    for s, t, y in zip(zs, zt, labels):
        ps, pt = _softmax(s / temp), _softmax(t / temp)
        bs, bt = np.array([ps[y], 1 - ps[y]]), np.array([pt[y], 1 - pt[y]])
        keep = np.arange(len(s)) != y
        qs, qt = ps[keep] / ps[keep].sum(), pt[keep] / pt[keep].sum()
        out.append((alpha * np.sum(bt * np.log(bt / bs)) + beta * np.sum(qt * np.log(qt / qs))) * temp ** 2)
    return np.array(out)


def test_dkd_matches_the_reference_on_random_logits():
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(0, 3, (6, 5)), rng.normal(0, 3, (6, 5))
    labels = rng.integers(0, 5, 6)
    got = _np(losses.dkd(tf.constant(zs, tf.float32), tf.constant(zt, tf.float32), tf.constant(labels),
                         1.0, 8.0, 4.0))
    np.testing.assert_allclose(got, _reference_dkd(zs, zt, labels, 1.0, 8.0, 4.0), rtol=1e-4, atol=1e-6)


def test_dkd_zero_at_equality_finite_with_a_certain_teacher_and_student_only_gradient():
    z = np.array([[2.0, -1.0, 0.5, 7.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(_np(losses.dkd(tf.constant(z), tf.constant(z), tf.constant([3, 1]))), 0, atol=1e-6)
    # A teacher certain of the target (p_target = 1 in float32) gives no log(0).
    certain = _np(losses.dkd(tf.constant(z), tf.constant([[0, 0, 0, 500.0], [0, 500.0, 0, 0]]), tf.constant([3, 1])))
    assert np.all(np.isfinite(certain)) and np.all(certain > 0)
    _no_teacher_gradient(lambda s, t: losses.dkd(s, t, tf.constant([3, 1])), z, z[::-1])


# ---- DIST --------------------------------------------------------------------------------------------
# Two classes: a centred probability row is (p − 1/2, 1/2 − p), so the Pearson correlation of two rows is
# +1 when both put p > 1/2 on the same class and −1 otherwise; the same holds for the class columns.
#   Student logits (1, 0), (0, 1); teacher (2, 0), (3, 0):
#   inter: row 0 both favour class 0 → ρ = 1 → 0; row 1 opposite → ρ = −1 → 2.
#   intra: class 0 column: student σ(1) > σ(−1) (falls), teacher σ(2) < σ(3) (rises) → ρ = −1; class 1
#          likewise → 1 − (−1) = 2, added to both examples.  Total (β = γ = τ = 1): (0 + 2, 2 + 2).
#   Teacher (2, 0), (0, 3) keeps every relation → 0, although its values differ from the student's.
def test_dist_hand_values():
    s = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(_np(losses.dist(s, tf.constant([[2.0, 0.0], [3.0, 0.0]]))), [2.0, 4.0], atol=1e-5)
    np.testing.assert_allclose(_np(losses.dist(s, tf.constant([[2.0, 0.0], [0.0, 3.0]]))), [0.0, 0.0], atol=1e-5)
    # β weighs the inter-class part, γ the intra-class part; τ² scales both.
    np.testing.assert_allclose(_np(losses.dist(s, tf.constant([[2.0, 0.0], [3.0, 0.0]]), beta=2.0, gamma=0.5)),
                               [0 + 1.0, 4.0 + 1.0], atol=1e-5)


def _reference_dist(zs, zt, beta, gamma, tau):
    ys, yt = _softmax(zs / tau), _softmax(zt / tau)
    inter = np.array([1 - np.corrcoef(a, b)[0, 1] for a, b in zip(ys, yt)])
    intra = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ys.T, yt.T)])
    return tau ** 2 * (beta * inter + gamma * intra)


def test_dist_matches_the_reference_on_random_logits_and_is_zero_at_equality():
    rng = np.random.default_rng(1)
    zs, zt = rng.normal(0, 2, (6, 5)), rng.normal(0, 2, (6, 5))
    for tau in (1.0, 4.0):
        got = _np(losses.dist(tf.constant(zs, tf.float32), tf.constant(zt, tf.float32), 1.0, 2.0, tau))
        np.testing.assert_allclose(got, _reference_dist(zs, zt, 1.0, 2.0, tau), rtol=1e-4, atol=1e-5)
    same = _np(losses.dist(tf.constant(zs, tf.float32), tf.constant(zs, tf.float32)))
    np.testing.assert_allclose(same, 0.0, atol=1e-5)  # exactly 0 but for DIST's ε = 1e-8
    _no_teacher_gradient(losses.dist, zs, zt)


# ---- attention transfer ------------------------------------------------------------------------------
# One 2×2 map. Student, 1 channel: F = [[1, 0], [0, 0]] → mean_c F² = (1, 0, 0, 0), already unit length.
# Teacher, 2 channels of ones: mean_c F² = (1, 1, 1, 1) → (1/2, 1/2, 1/2, 1/2).
# Mean over the 4 positions of the squared difference: ((1/2)² + 3 (1/2)²) / 4 = 1/4.
def test_attention_transfer_hand_value_across_channel_counts():
    s = np.zeros((1, 2, 2, 1), np.float32)
    s[0, 0, 0, 0] = 1.0
    t = np.ones((1, 2, 2, 2), np.float32)
    np.testing.assert_allclose(_np(losses.attention_transfer([tf.constant(s)], [tf.constant(t)])), [0.25],
                               rtol=1e-6)
    # Two maps sum; the component scales by β = 1000 (the paper's).
    got = methods.AT()({k: tf.constant(s) for k in methods.AT_STAGES}, {k: tf.constant(t) for k in methods.AT_STAGES})
    np.testing.assert_allclose(_np(got), [4 * 0.25 * 1000], rtol=1e-6)


def _reference_at(s_maps, t_maps, p):
    total = np.zeros(len(s_maps[0]))
    for s, t in zip(s_maps, t_maps):
        for i in range(len(s)):
            a = (np.abs(s[i]) ** p).mean(-1).ravel()
            b = (np.abs(t[i]) ** p).mean(-1).ravel()
            total[i] += np.mean((a / np.linalg.norm(a) - b / np.linalg.norm(b)) ** 2)
    return total


def test_attention_transfer_matches_the_reference_and_is_zero_at_equality():
    rng = np.random.default_rng(2)
    s_maps = [rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 2, 2, 3))]
    t_maps = [rng.normal(size=(3, 4, 4, 8)), rng.normal(size=(3, 2, 2, 12))]
    for p in (2.0, 1.0):
        got = losses.attention_transfer([tf.constant(m, tf.float32) for m in s_maps],
                                        [tf.constant(m, tf.float32) for m in t_maps], p)
        np.testing.assert_allclose(_np(got), _reference_at(s_maps, t_maps, p), rtol=1e-4)
    same = losses.attention_transfer([tf.constant(m, tf.float32) for m in s_maps],
                                     [tf.constant(m, tf.float32) for m in s_maps])
    np.testing.assert_allclose(_np(same), 0.0, atol=1e-7)
    _no_teacher_gradient(lambda a, b: losses.attention_transfer([a], [b]), s_maps[0], t_maps[0][..., :2])


def test_attention_transfer_resizes_a_student_map_of_another_stride_to_the_teachers_grid():
    """MobileFaceNet's stage 4 is 3×3 where ResNet's is 2×2 (48 px): the student's attention is resized."""
    flat = losses.attention_transfer([tf.ones((2, 4, 4, 3))], [tf.ones((2, 2, 2, 5))])
    np.testing.assert_allclose(_np(flat), 0.0, atol=1e-7)
    s = np.zeros((1, 4, 4, 3), np.float32)
    s[:, :2, :2] = 1.0  # the student's energy in its top-left quarter
    corner = lambda i, j: np.pad(np.ones((1, 1, 1, 5), np.float32), [(0, 0), (i, 1 - i), (j, 1 - j), (0, 0)])  # noqa: E731
    near = _np(losses.attention_transfer([tf.constant(s)], [tf.constant(corner(0, 0))]))
    far = _np(losses.attention_transfer([tf.constant(s)], [tf.constant(corner(1, 1))]))
    assert near[0] < 0.25 * far[0]
    rng = np.random.default_rng(3)
    odd = tf.Variable(rng.normal(size=(2, 3, 3, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.attention_transfer([odd], [tf.constant(rng.normal(size=(2, 2, 2, 6)), tf.float32)]))
    grad = tape.gradient(loss, odd)
    assert np.isfinite(_np(loss)) and np.abs(_np(grad)).sum() > 0


# ---- RKD ---------------------------------------------------------------------------------------------
# Teacher T = (0,0), (1,0), (0,1); student S = (0,0), (1,0), (2,0).
# Distances: T: d01 = 1, d02 = 1, d12 = √2, mean (2 + √2)/3; S: 1, 2, 1, mean 4/3. Normalized:
#   T = (1, 1, √2)·3/(2 + √2), S = (3/4, 3/2, 3/4); every difference is below 1 → ½x²; each pair twice in
#   the 3×3 matrix, diagonal 0: loss_d = Σ_pairs (s − t)² / 9.
# Angles cos∠(x_j − x_i, x_k − x_i), j ≠ k, both ≠ i (other entries agree: 1 for j = k, 0 with i):
#   i=0: T 0 (right angle), S 1 → diff 1 → smooth-L1 0.5;  i=1: T 1/√2, S −1 → 1 + 1/√2 − 0.5;
#   i=2: T 1/√2, S 1 → ½(1 − 1/√2)²; each twice (j,k and k,j), over 27 entries.
RKD_T = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
RKD_S = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]
_TN = np.array([1, 1, math.sqrt(2)]) * 3 / (2 + math.sqrt(2))
RKD_D = float(np.sum((np.array([0.75, 1.5, 0.75]) - _TN) ** 2) / 9)
RKD_A = 2 * (0.5 + (1 + 1 / math.sqrt(2) - 0.5) + 0.5 * (1 - 1 / math.sqrt(2)) ** 2) / 27


def test_rkd_hand_values():
    s, t = tf.constant(RKD_S), tf.constant(RKD_T)
    np.testing.assert_allclose(float(losses.rkd(s, t, 1.0, 0.0)), RKD_D, rtol=1e-5)
    np.testing.assert_allclose(float(losses.rkd(s, t, 0.0, 1.0)), RKD_A, rtol=1e-5)
    np.testing.assert_allclose(float(losses.rkd(s, t)), 25 * RKD_D + 50 * RKD_A, rtol=1e-5)


def _reference_rkd(s, t, wd, wa):
    def dist(e):
        d = np.array([[np.linalg.norm(a - b) for b in e] for a in e])
        return d / d[d > 0].mean()

    def angles(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    if np.linalg.norm(u) > 0 and np.linalg.norm(v) > 0:
                        out[i, j, k] = u @ v / np.linalg.norm(u) / np.linalg.norm(v)
        return out

    huber = lambda x: np.where(np.abs(x) < 1, 0.5 * x ** 2, np.abs(x) - 0.5)  # noqa: E731
    return wd * huber(dist(s) - dist(t)).mean() + wa * huber(angles(s) - angles(t)).mean()


def test_rkd_matches_the_reference_across_widths_and_ignores_scale():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 7))  # different widths: relations only
    got = float(losses.rkd(tf.constant(s, tf.float32), tf.constant(t, tf.float32)))
    np.testing.assert_allclose(got, _reference_rkd(s, t, 25, 50), rtol=1e-4)
    # Zero at equality, and for any scaled copy of the teacher (distances are mean-normalized).
    t32 = tf.constant(t, tf.float32)
    assert abs(float(losses.rkd(t32, t32))) < 1e-6 and abs(float(losses.rkd(3.0 * t32, t32))) < 1e-5
    _no_teacher_gradient(lambda a, b: losses.rkd(a, b), s, t)


# ---- face-embedding losses: cosine consistency and the similarity matrix --------------------------------
def _reference_emb_cos(s, t):
    return np.array([1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(s, t)])


def _reference_emb_sim(s, t):
    """Mean over i ≠ j of (cos_S(i, j) − cos_T(i, j))², pair by pair."""
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    n = len(s)
    return np.mean([(cos(s[i], s[j]) - cos(t[i], t[j])) ** 2 for i in range(n) for j in range(n) if i != j])


def test_embedding_cosine_matches_the_reference_and_leaves_the_norm_free():
    rng = np.random.default_rng(4)
    s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = _np(losses.embedding_cosine(tf.constant(s, tf.float32), tf.constant(t, tf.float32)))
    assert got.shape == (6,)
    np.testing.assert_allclose(got, _reference_emb_cos(s, t), rtol=1e-5, atol=1e-6)
    # Zero at equality and for any positive rescaling of each row (only the direction counts); 2 when opposite.
    t32 = tf.constant(t, tf.float32)
    scale = tf.constant(rng.uniform(0.1, 10, (6, 1)), tf.float32)
    np.testing.assert_allclose(_np(losses.embedding_cosine(t32, t32)), 0.0, atol=1e-6)
    np.testing.assert_allclose(_np(losses.embedding_cosine(scale * t32, t32)), 0.0, atol=1e-6)
    np.testing.assert_allclose(_np(losses.embedding_cosine(-t32, t32)), 2.0, rtol=1e-6)
    _no_teacher_gradient(losses.embedding_cosine, s, t)


def test_similarity_matrix_matches_the_reference_across_widths():
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(6, 3)), rng.normal(size=(6, 9))  # different widths: B×B matrices match
    got = float(losses.similarity_matrix(tf.constant(s, tf.float32), tf.constant(t, tf.float32)))
    np.testing.assert_allclose(got, _reference_emb_sim(s, t), rtol=1e-5)
    assert got > 0.01
    # A batch of one has no pair: 0, not NaN.
    assert float(losses.similarity_matrix(tf.constant(s[:1], tf.float32), tf.constant(t[:1], tf.float32))) == 0.0
    _no_teacher_gradient(losses.similarity_matrix, s, t)


def test_similarity_matrix_is_zero_for_a_rotated_rescaled_or_wider_copy_of_the_teacher():
    rng = np.random.default_rng(6)
    t = rng.normal(size=(7, 4))
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))          # a rotation (orthogonal)
    m, _ = np.linalg.qr(rng.normal(size=(10, 4)))         # 4 → 10 with orthonormal columns: S Sᵀ = T Tᵀ
    t32 = tf.constant(t, tf.float32)
    for student in (t, 3.0 * t @ q, 0.2 * t @ m.T, t * rng.uniform(0.5, 2, (7, 1))):
        got = float(losses.similarity_matrix(tf.constant(student, tf.float32), t32))
        assert abs(got) < 1e-6, got  # float32 round-off
    assert float(losses.similarity_matrix(t32, t32)) == 0.0  # the same tensors: exactly 0
    # ... while a per-example cosine would see the rotation.
    assert float(tf.reduce_mean(losses.embedding_cosine(tf.constant(t @ q, tf.float32), t32))) > 0.1


def test_embedding_components_read_k_and_the_similarity_matrix_is_broadcast():
    rng = np.random.default_rng(7)
    s, t = rng.normal(size=(5, 6)).astype(np.float32), rng.normal(size=(5, 6)).astype(np.float32)
    got = _np(methods.EmbSim()({"hidden": tf.constant(s)}, {"hidden": tf.constant(t)}))
    np.testing.assert_allclose(got, [_reference_emb_sim(s, t)] * 5, rtol=1e-5)
    got = _np(methods.EmbCos()({"hidden": tf.constant(s)}, {"hidden": tf.constant(t)}))
    np.testing.assert_allclose(got, _reference_emb_cos(s, t), rtol=1e-5, atol=1e-6)
    assert methods.EmbSim.relational and not methods.EmbCos.relational


def test_relational_components_give_the_batch_value_to_every_example():
    s, t = tf.constant(RKD_S), tf.constant(RKD_T)
    got = _np(methods.RKD(1.0, 0.0)({"hidden": s}, {"hidden": t}))
    np.testing.assert_allclose(got, [RKD_D] * 3, rtol=1e-5)  # its mean over the batch is the batch value
    assert methods.RKD.relational and methods.DIST.relational and not methods.DKD.relational


# ---- the registry and parse_kd -----------------------------------------------------------------------
def test_parse_kd():
    assert methods.parse_kd("soft:1,hidden:0.5") == [("soft", 1.0), ("hidden", 0.5)]
    assert methods.parse_kd(" soft , logits:2 ") == [("soft", 1.0), ("logits", 2.0)]  # weight 1 when omitted
    assert methods.parse_kd("soft:0,hidden:0.5") == [("hidden", 0.5)]                  # weight 0 dropped
    assert methods.parse_kd("") == [] and methods.parse_kd("none") == []
    assert methods.parse_kd("at:2+soft") == [("soft", 1.0), ("at", 2.0)]               # '+', registry order
    assert methods.parse_kd("fitnet") == [("hint", 1.0)]                               # alias
    assert methods.parse_kd("emb_cos:0.5,emb_sim") == [("emb_cos", 0.5), ("emb_sim", 1.0)]
    assert methods.parse_kd("emb_sim+soft") == [("soft", 1.0), ("emb_sim", 1.0)]       # after the older terms


@pytest.mark.parametrize("spec, message", [
    ("soft:1,attention:1", "unknown distillation target 'attention'"),
    ("dkd:x", "must be a number"),
    ("dkd:-1", "finite number ≥ 0"),
    ("dkd:nan", "finite number ≥ 0"),
    ("dkd,dkd:2", "'dkd' is given twice"),
    ("none+soft", "unknown distillation target 'none'"),
])
def test_parse_kd_errors_name_the_culprit(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        methods.parse_kd(spec)
    if "unknown" in message:
        for name in ("soft", "logits", "hidden", "hint", "fitnet", "dkd", "dist", "at", "rkd", "emb_cos",
                     "emb_sim"):
            assert name in str(err.value)


def test_registry_features_adapters_and_config():
    r = methods.REGISTRY
    assert list(r) == ["soft", "logits", "hidden", "hint", "dkd", "dist", "at", "rkd", "emb_cos", "emb_sim"]
    assert (r["soft"].keys, r["soft"].adapter) == (("logits",), None)
    assert (r["hidden"].keys, r["hidden"].adapter) == (("hidden",), "dense")
    assert (r["hint"].keys, r["hint"].adapter) == (("hint",), "conv1x1")
    assert r["at"].keys == ("stage1", "stage2", "stage3", "stage4") and r["at"].any_width
    assert r["dkd"].needs_labels and r["rkd"].any_width
    assert (r["emb_cos"].keys, r["emb_cos"].adapter, r["emb_cos"].any_width) == (("hidden",), "dense", False)
    assert (r["emb_sim"].keys, r["emb_sim"].adapter, r["emb_sim"].any_width) == (("hidden",), None, True)
    assert methods.create("emb_cos", Config()) == methods.EmbCos() and methods.create("emb_sim") == methods.EmbSim()
    # Hyper-parameters come from Config.<prefix>_<field> (the flags), defaults from the papers.
    assert methods.create("dkd") == methods.DKD(alpha=1.0, beta=8.0, temperature=4.0)
    assert methods.create("rkd") == methods.RKD(distance_weight=25.0, angle_weight=50.0)
    cfg = Config(temperature=5.0, tau2=True, dkd_beta=2.0, dist_tau=4.0, at_p=1.0, rkd_angle_weight=0.0)
    assert methods.create("soft", cfg) == methods.Soft(temperature=5.0, tau2=True)
    assert methods.create("dkd", cfg) == methods.DKD(alpha=1.0, beta=2.0, temperature=4.0)
    assert methods.create("dist", cfg).tau == 4.0 and methods.create("at", cfg).p == 1.0
    assert methods.create("rkd", cfg).angle_weight == 0.0 and methods.create("fitnet").name == "hint"


def test_spec_and_paper_names():
    assert methods.spec_name([]) == "none"
    assert methods.spec_name([("soft", 1.0), ("at", 2.0)]) == "soft_at2"
    assert methods.spec_name([("dkd", 0.5)]) == "dkd0p5"
    assert methods.paper_name([("soft", 1.0)]) == "a1b0" and methods.paper_name([]) == "a0b0"
    assert methods.paper_name([("soft", 1.0), ("hidden", 0.5)]) == "a1b0.5"
    assert methods.paper_name([("soft", 1.0), ("rkd", 1.0)]) is None
    assert methods.spec_name(methods.parse_kd("emb_cos:0.5,emb_sim")) == "emb_cos0p5_emb_sim"


def test_feature_layers_are_the_last_block_of_each_stage():
    model = resnet.build_model(8, SIZE, CLASSES)
    assert resnet.FEATURE_LAYERS["stage1"] == "s1b3_out" and resnet.FEATURE_LAYERS["stage4"] == "s4b3_out"
    assert resnet.FEATURE_LAYERS["hint"] == resnet.FEATURE_LAYERS["stage2"] == "s2b4_out"
    for s in range(1, 5):  # spatial size image / 2^(s+1); the next layer starts stage s+1 (or the pooling)
        layer = model.get_layer(resnet.FEATURE_LAYERS[f"stage{s}"])
        assert layer.output.shape[1] == SIZE // 2 ** (s + 1)
        assert {n.outbound_layer.name for n in layer._outbound_nodes} <= {f"s{s + 1}b1_conv1", f"s{s + 1}b1_proj",
                                                                          "hidden"}
    assert archs.feature_model(model, ["logits", "hidden"]) is model
    with pytest.raises(ValueError, match="no feature named"):
        archs.feature_model(model, ["stage9"])


# ---- the Distiller composing them --------------------------------------------------------------------
def _ce(y, s):
    return losses.label_ce(y["label"], s["logits"])


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32), rng.integers(0, CLASSES, n).astype(np.int32)


def _sharpen(model):
    """A fresh class head gives near-uniform logits; ×30 makes every logit-based term substantial."""
    kernel = model.get_layer("logits").kernel
    kernel.assign(kernel * 30.0)


ALL = [(n, 1.0) for n in methods.REGISTRY]


@pytest.fixture(scope="module")
def composed():
    """Student /8, teacher /4, every registered loss at once; two eager fit steps of 4 images."""
    keras.utils.set_random_seed(0)
    student = resnet.build_model(8, SIZE, CLASSES, name="student")
    teacher = resnet.build_model(4, SIZE, CLASSES, name="teacher")
    _sharpen(teacher)
    outputs, n_weights = set(student.output), len(student.weights)
    s_before = [w.copy() for w in student.get_weights()]
    t_before = [w.copy() for w in teacher.get_weights()]
    d = Distiller(student, teacher, task_loss=_ce, targets=ALL)
    x, y = _batch()
    value = {k: float(v) for k, v in d.test_step((tf.constant(x), {"label": tf.constant(y)})).items()}
    d.compile(keras.optimizers.SGD(0.01), run_eagerly=True)
    history = d.fit(tf.data.Dataset.from_tensor_slices((x, {"label": y})).batch(4), epochs=1, verbose=0).history
    return dict(d=d, student=student, teacher=teacher, s_before=s_before, t_before=t_before, x=x, y=y,
                value=value, history=history, outputs=outputs, n_weights=n_weights)


def test_every_method_composes_into_one_finite_loss(composed):
    h = composed["history"]
    assert set(h) == {"loss", "task"} | set(methods.REGISTRY)
    for name in methods.REGISTRY:
        assert np.isfinite(h[name][0]) and h[name][0] > 0, name
    # Adapters only where a loss asks for one and widths differ (AT, RKD, emb_sim compare relations/maps).
    adapters = composed["d"].adapters
    assert {n for n, a in adapters.items() if a is not None} == {"hidden", "hint", "emb_cos"}


def test_teacher_unchanged_and_student_changed_after_a_step(composed):
    for a, b in zip(composed["t_before"], composed["teacher"].get_weights()):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in zip(composed["s_before"], composed["student"].get_weights())]
    assert sum(changed) > 0.9 * len(changed)


def test_the_student_itself_is_untouched_by_feature_taps(composed):
    """Features come from a model over the same layers: the student's outputs and weights are as built."""
    student = composed["student"]
    assert set(student.output) == composed["outputs"] == {"logits", "hidden", "hint"}
    assert len(student.weights) == composed["n_weights"]
    assert composed["d"]._student_features is not student  # AT's stage maps needed the feature model
    assert all(layer in student.layers for layer in composed["d"]._student_features.layers)


@pytest.mark.parametrize("name", list(methods.REGISTRY))
def test_each_term_sends_gradient_to_the_student_only(composed, name):
    d, teacher = composed["d"], composed["teacher"]
    x, y = composed["x"][:4], composed["y"][:4]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(teacher.weights)  # watched explicitly: only stop_gradient can cut them off
        term = tf.reduce_mean(d._per_example(tf.constant(x), {"label": tf.constant(y)}, training=False)[name])
    assert all(g is None or not np.any(g.numpy()) for g in tape.gradient(term, teacher.weights))
    grads = [g for g in tape.gradient(term, d.trained_variables) if g is not None]
    assert grads and any(np.any(g.numpy()) for g in grads)


def test_reported_terms_equal_the_reference_formulas_on_the_tapped_features(composed):
    """AT on the four stage maps, RKD on K, DKD on logits + labels: the Distiller wires the right tensors."""
    student, teacher, x, y, got = (composed[k] for k in ("student", "teacher", "x", "y", "value"))
    # The values were taken before the fit step; recompute the features from the weights of that moment.
    s_model, t_model = (keras.models.clone_model(m) for m in (student, teacher))
    s_model.set_weights(composed["s_before"])
    t_model.set_weights(composed["t_before"])

    def feats(m):
        names = [resnet.FEATURE_LAYERS[k] for k in methods.AT_STAGES] + ["hidden", "logits"]
        out = keras.Model(m.input, [m.get_layer(n).output for n in names])(x, training=False)
        return [o.numpy().astype(np.float64) for o in out]

    s, t = feats(s_model), feats(t_model)
    np.testing.assert_allclose(got["at"], 1000 * _reference_at(s[:4], t[:4], 2.0).mean(), rtol=1e-4)
    np.testing.assert_allclose(got["rkd"], _reference_rkd(s[4], t[4], 25, 50), rtol=1e-4)
    np.testing.assert_allclose(got["emb_sim"], _reference_emb_sim(s[4], t[4]), rtol=1e-4)
    np.testing.assert_allclose(got["dkd"], _reference_dkd(s[5], t[5], y, 1.0, 8.0, 4.0).mean(), rtol=1e-4)
    np.testing.assert_allclose(got["dist"], _reference_dist(s[5], t[5], 1.0, 1.0, 1.0).mean(), rtol=1e-4)


def test_every_term_is_zero_when_the_student_is_the_teacher():
    keras.utils.set_random_seed(1)
    student = resnet.build_model(8, SIZE, CLASSES, name="student")
    _sharpen(student)
    teacher = keras.models.clone_model(student)
    teacher.set_weights(student.get_weights())
    d = Distiller(student, teacher, task_loss=_ce, targets=ALL)
    assert all(a is None for a in d.adapters.values())  # same widths: nothing to adapt
    x, y = _batch(8, seed=2)
    got = {k: float(v) for k, v in d.test_step((tf.constant(x), {"label": tf.constant(y)})).items()}
    for name in methods.REGISTRY:
        assert abs(got[name]) < (1e-5 if name == "dist" else 1e-6), (name, got[name])  # DIST: its ε
    assert got["task"] > 0.1


def test_emb_cos_projects_a_narrower_student_and_emb_sim_needs_no_adapter():
    keras.utils.set_random_seed(3)
    student = resnet.build_model(8, SIZE, CLASSES, name="student")   # K: 256
    teacher = resnet.build_model(4, SIZE, CLASSES, name="teacher")   # K: 512
    s_dim, t_dim = student.output["hidden"].shape[-1], teacher.output["hidden"].shape[-1]
    assert s_dim < t_dim
    d = Distiller(student, teacher, targets=[("emb_cos", 0.5), ("emb_sim", 1.0)])
    adapter = d.adapters["emb_cos"]
    assert isinstance(adapter, keras.layers.Dense) and adapter.units == t_dim and d.adapters["emb_sim"] is None
    assert all(any(v is w for w in d.trained_variables) for v in adapter.trainable_variables)
    # The terms are the formulas on the projected (emb_cos) and the raw (emb_sim) embeddings, weights applied.
    x, _ = _batch(6, seed=4)
    terms = d._per_example(tf.constant(x), {}, training=False)
    s_k, t_k = student(x, training=False)["hidden"], teacher(x, training=False)["hidden"]
    np.testing.assert_allclose(_np(terms["emb_cos"]), 0.5 * _reference_emb_cos(_np(adapter(s_k)), _np(t_k)),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_np(terms["emb_sim"]), [_reference_emb_sim(_np(s_k), _np(t_k))] * 6, rtol=1e-4)


def test_dkd_without_labels_and_a_loss_given_twice_are_refused():
    keras.utils.set_random_seed(0)
    student = resnet.build_model(8, SIZE, CLASSES)
    teacher = resnet.build_model(8, SIZE, CLASSES)
    d = Distiller(student, teacher, targets=[("dkd", 1.0)])
    x, _ = _batch(4)
    with pytest.raises(ValueError, match="dkd needs identity labels"):
        d._per_example(tf.constant(x), {"landmarks": tf.zeros([4, 5, 2])}, training=False)
    with pytest.raises(ValueError, match="given twice"):
        Distiller(student, teacher, targets=[("hint", 1.0), (methods.Hint(), 2.0)])
    # A configured object stands in for a name: the Distiller uses it as given.
    d = Distiller(student, teacher, targets=[(methods.DKD(beta=2.0), 1.0)])
    assert d.targets[0][0].beta == 2.0


# ---- plans ---------------------------------------------------------------------------------------------
def _names(task, cfg):
    return [s.name for s in TASKS[task].plan(cfg)]


def test_default_plans_are_unchanged():
    cfg = Config(students=(8,), verify_softmax=(True,))
    assert _names("classify", cfg) == ["teacher", "student_d8_label", "student_d8_scratch_soft",
                                       "student_d8_fitnet_hint", "student_d8_fitnet_soft", "student_d8_label_soft",
                                       "student_d8_select", "student_d8_select_soft"]
    assert _names("align", cfg) == ["teacher", "student_d8_pretrain"] + [
        f"student_d8_{i}_{ab}" for i in ("pretrain", "distill") for ab in ("a0b0", "a0b1", "a1b0")]
    assert _names("verify", cfg)[-1] == "student_d8_distill_a1b0_softmax" and len(_names("verify", cfg)) == 8
    assert [s.method for s in TASKS["classify"].plan(cfg)][5] == "soft"


def test_methods_add_one_stage_each_on_the_footing_of_ours():
    cfg = Config(students=(8,), verify_softmax=(True,), methods=("none", "soft", "dkd", "soft+at:2", "fitnet"))
    plan = {s.name: s for s in TASKS["classify"].plan(cfg)}
    assert list(plan)[6:] == ["student_d8_label_none", "student_d8_label_dkd", "student_d8_label_soft_at2",
                              "student_d8_label_hint",  # "soft" is Ours itself
                              "student_d8_select", "student_d8_select_soft", "student_d8_select_none"]
    dkd = plan["student_d8_label_dkd"]
    ours = plan["student_d8_label_soft"]
    assert (dkd.init, dkd.init_from, dkd.teacher, dkd.epochs, dkd.lr) == (
        ours.init, ours.init_from, ours.teacher, ours.epochs, ours.lr)
    assert dkd.targets == (("dkd", 1.0),) and plan["student_d8_label_none"].teacher is None
    verify = {s.name: s for s in TASKS["verify"].plan(cfg)}
    # soft and none are the α:β stages a1b0 and a0b0 already planned: no duplicate.
    assert [n for n in verify if n not in _names("verify", Config(students=(8,), verify_softmax=(True,)))] == [
        "student_d8_distill_dkd_softmax", "student_d8_distill_soft_at2_softmax", "student_d8_distill_hint_softmax"]
    rkd = TASKS["verify"].plan(cfg.replace(methods=("rkd",)))[-1]
    assert (rkd.name, rkd.init, rkd.init_from, rkd.teacher, rkd.softmax) == (
        "student_d8_distill_rkd_softmax", "distill", ("classify", "student_d8_label_soft"),
        ("verify", "teacher_softmax"), True)


def test_select_starts_from_the_teacher_and_is_left_out_where_it_cannot_apply():
    cfg = Config(students=(8, 4), cls_inits=("label", "select"), methods=("none",))
    plan = {s.name: s for s in TASKS["classify"].plan(cfg)}
    sel, soft, none = (plan[f"student_d4_select{x}"] for x in ("", "_soft", "_none"))
    assert (sel.init, sel.init_from, sel.teacher, sel.targets, sel.lr) == ("select", ("classify", "teacher"), None,
                                                                          (), cfg.lr_scratch)
    ours = plan["student_d4_label_soft"]
    assert (soft.init, soft.init_from, soft.targets, soft.lr, soft.epochs) == (
        "selected", ("classify", "student_d4_select"), ours.targets, ours.lr, ours.epochs)
    assert (none.init_from, none.teacher, none.targets) == (("classify", "student_d4_select"), None, ())
    assert not TASKS["classify"].skipped(cfg)
    mobile = cfg.replace(student_arch=("resnet50", "mobilefacenet"))
    assert "student_d8_select" in _names("classify", mobile) and not any(
        n.startswith("student_mbf_select") for n in _names("classify", mobile))
    (what, why), = TASKS["classify"].skipped(mobile)
    assert what == "--cls_inits=select for mbf" and "not mobilefacenet" in why
    brought = cfg.replace(teacher="/models/teacher.keras")
    assert not any("select" in n for n in _names("classify", brought))
    assert all("brings its own teacher" in why for _, why in TASKS["classify"].skipped(brought))


def test_transfer_select_starts_from_the_tasks_own_teacher():
    cfg = Config(students=(8,), student_arch=("resnet50", "mobilefacenet"), transfer_inits=("distill", "select"),
                 verify_softmax=(False, True))
    for task, suffix in (("align", ""), ("verify", "_softmax")):
        plan = {s.name: s for s in TASKS[task].plan(cfg)}
        sel, dist = plan[f"student_d8_select_a0b1{suffix}"], plan[f"student_d8_distill_a0b1{suffix}"]
        assert (sel.init, sel.init_from, sel.teacher) == ("select", (task, "teacher" + suffix), dist.teacher)
        assert (sel.epochs, sel.lr, sel.targets, sel.softmax) == (dist.epochs, dist.lr, dist.targets, dist.softmax)
        assert not any(n.startswith("student_mbf_select") for n in plan)  # not the teacher's layers
        (what, why), = TASKS[task].skipped(cfg)
        assert what == "--transfer_inits=select for mbf" and "not mobilefacenet" in why
    brought = cfg.replace(teacher="/models/teacher.keras")
    assert not any("select" in n for n in _names("align", brought))


def test_kd_sets_the_loss_of_ours_and_what_transfer_starts_from():
    cfg = Config(students=(8,), kd="soft:1,hidden:0.5")
    ours = TASKS["classify"].plan(cfg)[5]
    assert (ours.name, ours.targets) == ("student_d8_label_soft_hidden0p5", (("soft", 1.0), ("hidden", 0.5)))
    assert TASKS["align"].plan(cfg)[-1].init_from == ("classify", "student_d8_label_soft_hidden0p5")
    # The default is the paper's soft targets at weight α, under the name it always had.
    assert TASKS["classify"].plan(Config(students=(8,), alpha=0.5))[5].targets == (("soft", 0.5),)


def test_dkd_is_left_out_where_labels_are_not_the_classification_classes():
    cfg = Config(students=(8,), methods=("dkd", "at"), data="/faces/celeba", cls_data="/faces/casia")
    assert not any(n.endswith("_dkd") for n in _names("align", cfg))
    assert any(n.endswith("_at") for n in _names("align", cfg))
    assert TASKS["align"].skipped(cfg)[0][0] == "--methods=dkd"
    assert "student_d8_label_dkd" in _names("classify", cfg)  # classification always has them
    same = cfg.replace(data="/faces/casia")
    assert "student_d8_distill_dkd" in _names("align", same) and not TASKS["align"].skipped(same)


def test_a_stage_planned_twice_differently_is_a_clear_error(tmp_path):
    cfg = Config(students=(8,), alpha=0.5, methods=("soft",), model_dir=str(tmp_path))
    with pytest.raises(StageError, match="student_d8_label_soft is planned twice"):
        Runner(cfg, strategy=tf.distribute.get_strategy(), log=lambda *_: None).plan("classify")


# ---- flags -------------------------------------------------------------------------------------------


def test_flags_reach_the_config(parse):
    cfg = parse("--preset=smoke", "--kd=soft:1,hidden:1", "--methods=dkd,soft+at:2", "--dkd_beta=2",
                "--rkd_angle_weight=10")
    assert cfg.kd == "soft:1,hidden:1" and cfg.methods == ("dkd", "soft+at:2")
    assert (cfg.dkd_beta, cfg.rkd_angle_weight, cfg.dkd_temperature, cfg.at_beta) == (2.0, 10.0, 4.0, 1000.0)
    assert parse("--preset=quick").methods == () and parse("--preset=quick").kd == ""


@pytest.mark.parametrize("argv, message", [
    (["--methods=dkd,crd"], "unknown distillation target 'crd'"),
    (["--kd=soft:-1"], "finite number ≥ 0"),
    (["--kd=soft:a"], "must be a number"),
    (["--methods=at+at"], "given twice"),
    (["--dkd_beta=-1"], "dkd_beta"),
])
def test_bad_method_flags_are_refused_with_the_reason(parse, argv, message):
    with pytest.raises(flags.Error, match=message):
        parse(*argv)


# ---- the methods table -------------------------------------------------------------------------------
def _rec(name, init, targets, method=None, d=8, role="student", **metrics):
    m = dict(name=name, role=role, width_divisor=d, init=init, targets=targets, alpha=1.0 * ("soft" in targets),
             beta=1.0 * ("hidden" in targets), params=1, flops=1, metrics=metrics)
    if method:
        m["method"] = method
    return m


CLASSIFY = [_rec("teacher", "scratch", [], d=1, role="teacher", top1=0.3, pair_acc=0.6),
            _rec("student_d8_label", "scratch", [], top1=0.35, pair_acc=0.7),
            _rec("student_d8_label_soft", "label", ["soft"], top1=0.5, pair_acc=0.8),   # an older record
            _rec("student_d8_label_dkd", "label", ["dkd"], "dkd", top1=0.55, pair_acc=0.81),
            _rec("student_d8_label_none", "label", [], "none", top1=0.4, pair_acc=0.75)]


def test_methods_table_in_results_md(tmp_path):
    md = results.write_markdown({"task": "classify", "models": CLASSIFY}, str(tmp_path / "r.md"))
    section = md[md.index("## Distillation methods, student /8"):]
    assert "| (teacher) | teacher | scratch | 30.00 | 60.00 |" in section
    assert "| soft | student_d8_label_soft | label | 50.00 | 80.00 |" in section
    assert "| dkd | student_d8_label_dkd | label | 55.00 | 81.00 |" in section
    assert "| none | student_d8_label_none | label | 40.00 | 75.00 |" in section
    assert "student_d8_label |" not in section.split("## All models")[0]  # label-only is no method row
    # Only the paper's terms (as a default run): no methods table.
    assert "Distillation methods" not in results.write_markdown(
        {"task": "classify", "models": CLASSIFY[:3]}, str(tmp_path / "r2.md"))


def test_paper_tables_ignore_other_losses(tmp_path):
    verify = [_rec("teacher_softmax", "classify", [], d=1, role="teacher", rank1=0.3),
              _rec("student_d8_distill_a0b0", "distill", [], rank1=0.4),
              _rec("student_d8_distill_rkd", "distill", ["rkd"], "rkd", rank1=0.9)]
    md = results.write_markdown({"task": "verify", "models": verify}, str(tmp_path / "v.md"))
    table4 = md[md.index("## Table 4"):md.index("## Verification metrics")]
    assert "40.00" in table4 and "90.00" not in table4
    assert "| rkd | student_d8_distill_rkd | distill | 90.00 |" in md


def test_methods_md_joins_the_tasks(tmp_path):
    verify = [_rec("teacher_softmax", "classify", [], d=1, role="teacher", rank1=0.3),
              _rec("student_d8_distill_a1b0_softmax", "distill", ["soft"], "soft", rank1=0.6),
              _rec("student_d8_distill_dkd_softmax", "distill", ["dkd"], "dkd", rank1=0.7)]
    for i, (task, models) in enumerate((("classify", CLASSIFY), ("verify", verify))):
        for m in models:
            m["softmax"] = task == "verify"
        res = results.Results(str(tmp_path / task / "results.json"),
                              {"task": task, "data": "x", "preset": "quick", "seed": 0, "models": models})
        res.save()
    text = results.write_methods(str(tmp_path))
    assert text == (tmp_path / "methods.md").read_text()
    assert "| method | classify top1 (%) | verify rank1 (%) (+softmax) |" in text
    assert "| soft | 50.00 | 60.00 |" in text and "| dkd | 55.00 | 70.00 |" in text
    assert "| none | 40.00 | – |" in text and "| (teacher) | 30.00 | 30.00 |" in text
    assert results.write_methods(str(tmp_path / "empty")) == ""


# ---- 2 replicas: relational terms are per replica ------------------------------------------------------
RELATIONAL_SCRIPT = textwrap.dedent("""
    LR = 0.5

    def nets():
        s = resnet.build_model(8, 32, 4, name="student")
        s.set_weights(s0)
        t = resnet.build_model(4, 32, 4, name="teacher")
        t.set_weights(t0)
        t.get_layer("logits").kernel.assign(t.get_layer("logits").kernel * 30.0)
        for layer in s.layers:  # per-example forward: replicas see the same function
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        return s, t

    ce = lambda yy, o: losses.label_ce(yy["label"], o["logits"])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        s, t = nets()
        d = Distiller(s, t, task_loss=ce, targets=[("rkd", 1.0), ("dist", 1.0)])
        d.compile(keras.optimizers.SGD(LR))
    h = d.fit(tf.data.Dataset.from_tensors((x, {"label": y})), epochs=1, verbose=0).history
    mirrored = np.concatenate([v.numpy().ravel() for v in s.trainable_variables])

    # By hand on one device: CE over all 8 + the relational terms on each replica's 4, averaged.
    s, t = nets()
    before = np.concatenate([v.numpy().ravel() for v in s.trainable_variables])

    def relational(idx):
        so, to = s(x[idx], training=False), t(x[idx], training=False)
        return losses.rkd(so["hidden"], to["hidden"]) + tf.reduce_mean(losses.dist(so["logits"], to["logits"]))

    with tf.GradientTape() as tape:
        task = tf.reduce_mean(ce({"label": y}, s(x, training=False)))
        per_replica = 0.5 * (relational(slice(0, 4)) + relational(slice(4, 8)))
        loss = task + per_replica
    grads = tape.gradient(loss, s.trainable_variables)
    by_hand = np.concatenate([(v - LR * g).numpy().ravel() for v, g in zip(s.trainable_variables, grads)])
    global_batch = float(task + relational(slice(0, 8)))
    print("RESULT " + json.dumps(dict(loss=float(h["loss"][0]), by_hand=float(loss), global_batch=global_batch,
                                      change=float(np.abs(by_hand - before).max()),
                                      diff=float(np.abs(mirrored - by_hand).max()))))
""")


@pytest.mark.slow  # a TensorFlow subprocess with 2 logical CPUs: ~25 s
def test_relational_terms_are_averaged_over_replicas_under_mirrored_strategy():
    """2 replicas × 4 images: RKD and DIST's intra-class term are computed per replica and averaged (as
    every data-parallel implementation does), not over the global batch of 8; loss and update match that."""
    r = run_two_cpu_script(RELATIONAL_SCRIPT)
    assert abs(r["global_batch"] - r["by_hand"]) > 1e-3  # per-replica ≠ global-batch relations: not vacuous
    np.testing.assert_allclose(r["loss"], r["by_hand"], rtol=1e-5)
    assert r["change"] > 1e-3 and r["diff"] < 1e-4, r


def test_joint_softmax_verification_on_other_data_than_the_classes_is_refused(tmp_path):
    """The softmax variant's labels must index the classification head's classes, as DKD's must."""
    cfg = Config(students=(8,), verify_softmax=(False, True), data="/faces/celeba", cls_data="/faces/casia",
                 model_dir=str(tmp_path))
    runner = Runner(cfg, strategy=tf.distribute.get_strategy(), log=lambda *_: None)
    with pytest.raises(StageError, match=r"^verify plan: --verify_softmax=on trains the classification head on "
                                         r"the identity labels of --data=/faces/celeba, but that head's classes "
                                         r"are those of --cls_data=/faces/casia; use --verify_softmax=off"):
        runner.plan("verify")
    assert not any(s.softmax for s in TASKS["verify"].plan(cfg.replace(verify_softmax=(False,))))
    assert any(s.softmax for s in TASKS["verify"].plan(cfg.replace(cls_data="/faces/celeba")))
    assert TASKS["align"].plan(cfg)  # alignment has no softmax to guard
