"""Hand-computed cases for keras_kd.metrics (the arithmetic is in the comments)."""
import numpy as np
import pytest

from keras_kd import metrics as M


def test_top1():
    logits = np.array([[0.1, 0.9, 0.0],   # argmax 1, label 1: right
                       [2.0, 1.0, 0.0],   # argmax 0, label 2: wrong
                       [0.0, 0.0, 5.0],   # argmax 2, label 2: right
                       [1.0, 3.0, 2.0]])  # argmax 1, label 0: wrong
    assert M.top1(logits, np.array([1, 2, 2, 0])) == pytest.approx(0.5)  # 2 of 4


def _faces():
    """Two faces: eyes 10 px apart (image 0) and 20 px apart (image 1)."""
    face0 = np.array([[0, 0], [10, 0], [5, 5], [2, 10], [8, 10]], float)  # bbox 10 x 10
    face1 = 2.0 * face0                                                  # bbox 20 x 20
    return np.stack([face0, face1])


def test_nrmse_interocular():
    true = _faces()
    pred = true.copy()
    pred[0, :, 0] += 1.0          # image 0: every landmark 1 px off → 1/10 = 0.10 each
    pred[1, 2] += [3.0, 4.0]      # image 1: nose 5 px off (3-4-5) → 5/20 = 0.25, others 0 → mean 0.05
    err = M.landmark_errors(pred, true)
    np.testing.assert_allclose(err[0], [0.1] * 5)
    np.testing.assert_allclose(err[1], [0, 0, 0.25, 0, 0])
    # mean over images of per-image means: (0.10 + 0.05) / 2 = 0.075 → 7.5 %
    assert M.nrmse(pred, true) == pytest.approx(7.5)


def test_nrmse_diagonal():
    true = _faces()
    pred = true.copy()
    pred[0, :, 0] += 1.0  # 1 px off; diagonal of the 10 x 10 box = 10·√2 → 1/(10√2) = 0.0707107
    pred[1, :, 1] += 2.0  # 2 px off; diagonal of the 20 x 20 box = 20·√2 → 2/(20√2) = 0.0707107
    assert M.nrmse(pred, true, "diagonal") == pytest.approx(100 / (10 * np.sqrt(2)))  # 7.0711 %
    with pytest.raises(ValueError, match="norm"):
        M.landmark_errors(pred, true, "box")


def test_zero_normaliser_rejected():
    true = np.zeros((1, 5, 2))
    with pytest.raises(ValueError, match="zero interocular"):
        M.landmark_errors(true, true)


def test_failure_rate():
    err = np.array([0.02, 0.10, 0.11, 0.30])  # > 0.10: 0.11 and 0.30 (0.10 itself is not a failure) → 2/4
    assert M.failure_rate(err) == pytest.approx(50.0)
    assert M.failure_rate(err, threshold=0.05) == pytest.approx(75.0)  # 0.10, 0.11, 0.30 → 3/4
    # per-landmark input is averaged per image first: rows mean 0.06 and 0.14 → one failure of two
    assert M.failure_rate(np.array([[0.06] * 5, [0.14] * 5])) == pytest.approx(50.0)


def test_ced_and_auc():
    err = np.array([0.0, 0.05, 0.2])
    x, y = M.ced(err, max_err=0.10, steps=11)  # x = 0, 0.01, ..., 0.10
    np.testing.assert_allclose(x, np.linspace(0, 0.1, 11))
    # y = share of errors ≤ x: 1/3 below 0.05 (only the 0.0), 2/3 from 0.05 on; 0.2 never counted
    np.testing.assert_allclose(y, [1 / 3] * 5 + [2 / 3] * 6)
    # area / max_err = mean(clip(1 - e/0.1, 0, 1)) = (1 + 0.5 + 0) / 3 = 0.5
    assert M.auc_ced(err, 0.10) == pytest.approx(0.5)
    # uniform errors on [0, 0.1] give the triangle: AUC → 0.5; all-zero errors give 1, all-large give 0
    assert M.auc_ced(np.linspace(0, 0.1, 10001)) == pytest.approx(0.5, abs=1e-4)
    assert M.auc_ced(np.zeros(3)) == 1.0 and M.auc_ced(np.ones(3)) == 0.0


def test_rank1_excludes_singletons():
    emb = np.array([[0.0, 0.0],    # id 0 → nearest other is [0.1, 0] (id 0): right
                    [0.1, 0.0],    # id 0 → nearest other is [0, 0] (id 0): right
                    [5.0, 5.0],    # id 1 → [5, 5.2] at 0.2 (id 2): wrong
                    [0.0, 9.0],    # id 1 → nearest other is [0, 7] (id 3, the singleton): wrong
                    [5.0, 5.2],    # id 2 → [5, 5] at 0.2 beats [5.3, 5.2] at 0.3 (id 1): wrong
                    [5.3, 5.2],    # id 2 → [5, 5.2] at 0.3 beats [5, 5] at √0.13 ≈ 0.36 (id 2): right
                    [0.0, 7.0]])   # id 3, singleton: excluded as a query, still a neighbour
    labels = np.array([0, 0, 1, 1, 2, 2, 3])
    # 3 right of 6 queries (the singleton is not a query) = 0.5
    assert M.rank1(emb, labels) == pytest.approx(0.5)
    assert M.rank1(emb, labels, block=2) == pytest.approx(0.5)  # blocking changes nothing
    assert np.isnan(M.rank1(emb[:3], np.array([0, 1, 2])))       # only singletons


def test_rank1_large_blocks_match_bruteforce():
    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(300, 16)), rng.integers(0, 40, 300)
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1) + np.diag(np.full(300, np.inf))
    counts = np.bincount(labels)
    q = counts[labels] > 1
    expected = np.mean(labels[np.argmin(d, 1)][q] == labels[q])
    assert M.rank1(emb, labels, block=64) == pytest.approx(expected)


def test_pair_distances():
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    b = np.array([[3.0, 4.0], [1.0, 1.0]])
    np.testing.assert_allclose(M.pair_distances(a, b), [5.0, 0.0])  # 3-4-5 triangle; identical rows


def test_pair_accuracy_separable():
    # same pairs at distance 0.1..0.5, different at 1.1..1.5, interleaved so every fold has both → 1.0 ± 0
    same = np.tile([True, False], 10)
    dist = np.where(same, 0.1, 1.1) + np.repeat(np.arange(10), 2) % 5 * 0.1
    assert M.pair_accuracy_10fold(dist, same) == pytest.approx((1.0, 0.0))


def test_pair_accuracy_known_threshold():
    # 10 folds of 2 pairs. Folds 1..9: (0.2 same, 0.8 different). Fold 0 is inverted: (0.9 same, 0.1 different).
    dist = np.array([0.9, 0.1] + [0.2, 0.8] * 9)
    same = np.array([True, False] * 10)
    # Held-out fold 0: trained on 9 × (0.2 same, 0.8 diff) → best t = midpoint 0.5 (18/18); on fold 0,
    #   0.9 < 0.5? no → "different" (wrong); 0.1 < 0.5 → "same" (wrong) → accuracy 0.
    # Held-out fold k ≥ 1: train = fold 0 + 8 normal folds (same: 0.9, 8×0.2; different: 0.1, 8×0.8).
    #   "same iff d < t": t below 0.1 → 9 diff right = 9/18; t=0.15 → 0 + 8 = 8/18; t=0.5 → 8 + 8 = 16/18;
    #   t=0.85 → 8 + 0 = 8/18; t above 0.9 → 9 + 0 = 9/18 → t = 0.5; held-out (0.2 same, 0.8 diff) → 1.
    # mean = 9/10 = 0.9; std = sqrt((0.9² + 9·0.1²)/10) = sqrt(0.09) = 0.3
    mean, std = M.pair_accuracy_10fold(dist, same)
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.3)
    with pytest.raises(ValueError):
        M.pair_accuracy_10fold(dist[:5], same[:5])  # fewer pairs than folds


def test_roc_endpoints_and_values():
    dist = np.array([0.1, 0.2, 0.3, 0.4])
    same = np.array([True, False, True, False])
    fpr, tpr, thr = M.roc(dist, same)
    # thresholds -inf, 0.1, 0.2, 0.3, 0.4; accept iff d ≤ t
    np.testing.assert_allclose(thr, [-np.inf, 0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    with pytest.raises(ValueError, match="both"):
        M.roc(dist, np.ones(4, bool))


def test_tar_at_far():
    # 4 same at 0.1..0.4; 1000 different: one at 0.25 (an impostor), the rest at 1.0
    dist = np.concatenate([[0.1, 0.2, 0.3, 0.4], [0.25], np.ones(999)])
    same = np.arange(1004) < 4
    # FAR 1e-3 allows 1 impostor of 1000: largest such threshold is 0.4 (impostor 0.25 accepted) → TAR 4/4
    assert M.tar_at_far(dist, same, far=1e-3) == pytest.approx(1.0)
    # FAR 1e-4 < 1/1000 → strict: no impostor accepted → threshold 0.2 → TAR 2/4
    assert M.tar_at_far(dist, same, far=1e-4) == pytest.approx(0.5)
    # few negatives (2): FAR ≤ 1e-3 means FAR = 0 → threshold below 0.25 → TAR 2/4 (not interpolated)
    assert M.tar_at_far(np.array([0.1, 0.2, 0.3, 0.4, 0.25, 0.9]), np.arange(6) < 4) == pytest.approx(0.5)


def test_all_pairs_tar_at_far_matches_every_pair_enumerated():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(30), 5)                      # 150 images: 300 same, 10,875 different pairs
    emb = rng.normal(size=(150, 8)) + 2.0 * rng.normal(size=(30, 8))[labels]
    pairs = [(i, j) for i in range(150) for j in range(i + 1, 150)]
    a, b = (np.array(x) for x in zip(*pairs))
    want = M.tar_at_far(M.pair_distances(emb[a], emb[b]), labels[a] == labels[b], 1e-3)
    tar, n_same, n_diff = M.all_pairs_tar_at_far(emb, labels, 1e-3)
    assert (n_same, n_diff) == (300, 10_875)
    assert tar == pytest.approx(want) and 0.0 < tar < 1.0
    assert M.all_pairs_tar_at_far(emb, labels, 1e-2)[0] >= tar   # a looser FAR accepts at least as many


def test_all_pairs_tar_at_far_subset_and_too_few_pairs():
    labels = np.repeat(np.arange(40), 4)
    emb = np.eye(40)[labels] + 0.01 * np.random.default_rng(0).normal(size=(160, 40))
    tar, n_same, n_diff = M.all_pairs_tar_at_far(emb, labels, 1e-3, max_images=150, seed=1)
    assert n_same + n_diff == 150 * 149 // 2 and tar == pytest.approx(1.0)   # separable identities
    assert M.all_pairs_tar_at_far(emb, labels, 1e-3, max_images=150, seed=1)[1] == n_same  # seeded subset
    assert M.all_pairs_tar_at_far(emb[:40], labels[:40], 1e-3)[0] is None   # 720 different pairs < 10 / FAR
    assert M.all_pairs_tar_at_far(np.eye(200), np.arange(200), 1e-3)[0] is None   # 19,900 different, no same


def test_balanced_pairs_counts_labels_determinism():
    labels = np.repeat(np.arange(10), 5)  # 10 ids × 5 images: 10·C(5,2) = 100 same pairs available
    pairs = M.balanced_pairs(labels, 60, seed=3)
    assert len(pairs) == 60
    assert [p[2] for p in pairs] == [True, False] * 30  # alternating → every contiguous fold balanced
    for i, j, same in pairs:
        assert i < j and (labels[i] == labels[j]) == same
    assert len({(i, j) for i, j, _ in pairs}) == 60  # no pair twice
    assert M.balanced_pairs(labels, 60, seed=3) == pairs
    assert M.balanced_pairs(labels, 60, seed=4) != pairs
    # odd n: 61 // 2 = 30 of each
    assert len(M.balanced_pairs(labels, 61, seed=3)) == 60


def test_balanced_pairs_shortage():
    # ids 0,0,1,2: one same pair (0,1) exists → 1 same + 1 different, though 10 were asked for
    labels = np.array([0, 0, 1, 2])
    pairs = M.balanced_pairs(labels, 10, seed=0)
    assert len(pairs) == 2 and pairs[0] == (0, 1, True) and pairs[1][2] is False
    # enumeration path (asking for most of the pool) still gives distinct, correct pairs: C(5,2)·10 = 100
    many = M.balanced_pairs(np.repeat(np.arange(10), 5), 180, seed=1)
    assert len(many) == 180 and len(set(many)) == 180
    assert M.balanced_pairs(np.arange(5), 10, seed=0) == []  # all singletons: no same pair at all


def _outputs(seed=0, n=60):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, n)
    logits = rng.normal(size=(n, 6)).astype(np.float32)
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    true = rng.uniform(0.2, 0.8, (n, 5, 2)).astype(np.float32)
    true[:, 1, 0] = true[:, 0, 0] + 0.3  # the eyes apart
    outputs = {"logits": logits, "probabilities": (p / p.sum(axis=-1, keepdims=True)).astype(np.float32),
               "landmarks": true + rng.normal(0, 0.02, true.shape).astype(np.float32),
               "embedding": rng.normal(size=(n, 8)).astype(np.float32)}
    targets = {"label": labels, "landmarks": true, "has_landmarks": rng.uniform(size=n) < 0.8}
    return outputs, targets


def test_task_metrics_are_the_formulas_evaluate_and_export_used():
    """Task.metrics gives what each task's evaluate and export/tflite.py computed before they shared it."""
    from keras_kd.tasks import TASKS
    out, tgt = _outputs()
    keep = tgt["has_landmarks"]
    pred, true = out["landmarks"][keep], tgt["landmarks"][keep]
    per_point = M.landmark_errors(pred, true)
    assert TASKS["classify"].metrics(out, tgt) == {"top1": M.top1(out["logits"], tgt["label"])}
    probs_only = {"probabilities": out["probabilities"]}  # what a TFLite file outputs
    assert TASKS["classify"].metrics(probs_only, tgt) == {"top1": M.top1(out["probabilities"], tgt["label"])}
    assert TASKS["verify"].metrics(out, tgt) == {"rank1": M.rank1(out["embedding"], tgt["label"])}
    assert TASKS["align"].metrics(out, tgt) == {
        "nrmse": M.nrmse(pred, true, "interocular"), "nrmse_diag": M.nrmse(pred, true, "diagonal"),
        "failure_rate": M.failure_rate(per_point.mean(axis=1), 0.10), "auc10": M.auc_ced(per_point.mean(axis=1), 0.10),
        **{f"nrmse_{n}": float(100 * per_point[:, i].mean())
           for i, n in enumerate(("left_eye", "right_eye", "nose", "left_mouth", "right_mouth"))}}


def test_export_evaluates_files_with_the_task_metrics():
    """export/tflite.py's metric of a file's outputs is the task's headline from Task.metrics."""
    tflite = pytest.importorskip("export.tflite")
    out, tgt = _outputs(1)
    keep = tgt["has_landmarks"]
    assert tflite.task_metric("classify", {"probabilities": out["probabilities"]}, tgt) == {
        "top1": M.top1(out["probabilities"], tgt["label"])}
    assert tflite.task_metric("align", {"landmarks": out["landmarks"]}, tgt) == {
        "nrmse": M.nrmse(out["landmarks"][keep], tgt["landmarks"][keep], "interocular")}
    assert tflite.task_metric("verify", {"embedding": out["embedding"]}, tgt) == {
        "rank1": M.rank1(out["embedding"], tgt["label"])}


def test_pair_metrics_add_every_pair_tar_beside_the_pairs_ones(tmp_path):
    from keras_kd.tasks import verification
    labels = np.repeat(np.arange(30), 5)
    emb = np.eye(30)[labels] + 0.3 * np.random.default_rng(1).normal(size=(150, 30))
    tgt = {"label": labels, "source": [f"im{i}.png".encode() for i in range(150)]}
    m, art = verification.pair_metrics(emb, tgt, str(tmp_path), seed=0)   # no pairs.txt: pairs drawn
    assert art["pairs_from"] == "generated" and m["pairs"] == 600    # every same pair, as many different
    assert (m["same_pairs_all"], m["diff_pairs_all"]) == (300, 10_875)
    assert m["tar_at_far_1e-3_all"] == pytest.approx(M.all_pairs_tar_at_far(emb, labels, 1e-3)[0])
    few, _ = verification.pair_metrics(emb[:60], {k: v[:60] for k, v in tgt.items()}, str(tmp_path), seed=0)
    assert "tar_at_far_1e-3_all" not in few and "pair_acc" in few             # 1,650 different pairs: too few
