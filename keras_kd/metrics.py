"""Evaluation metrics in plain numpy, so they run on exported predictions without TensorFlow.

Units: classification and verification figures are fractions in 0..1 (``top1``, ``rank1``, pair accuracy,
TAR, CED AUC); the alignment error summaries ``nrmse`` and ``failure_rate`` are percentages, as the paper
reports NRMSE. Normalised landmark errors themselves stay fractions of the normaliser (0.10 = 10 %).
"""
from __future__ import annotations

import numpy as np

LEFT_EYE, RIGHT_EYE = 0, 1  # CelebA's 5-landmark order: eyes, nose, mouth corners


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction (0..1) of rows whose arg-max logit equals the integer label."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(logits) == 0:
        raise ValueError("top1 of an empty set")
    return float(np.mean(np.argmax(logits, axis=-1) == labels.reshape(-1)))


def landmark_errors(pred: np.ndarray, true: np.ndarray, norm: str = "interocular") -> np.ndarray:
    """[N, 5] Euclidean landmark errors as fractions of the ground truth's inter-ocular distance or box diagonal."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if pred.shape != true.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"landmarks must both be [N, L, 2], got {pred.shape} and {true.shape}")
    if norm == "interocular":
        scale = np.linalg.norm(true[:, LEFT_EYE] - true[:, RIGHT_EYE], axis=-1)
    elif norm == "diagonal":
        scale = np.linalg.norm(true.max(axis=1) - true.min(axis=1), axis=-1)
    else:
        raise ValueError(f"norm must be 'interocular' or 'diagonal', got {norm!r}")
    if np.any(scale <= 0):
        raise ValueError(f"{int(np.sum(scale <= 0))} image(s) have a zero {norm} normaliser")
    return np.linalg.norm(pred - true, axis=-1) / scale[:, None]


def nrmse(pred: np.ndarray, true: np.ndarray, norm: str = "interocular") -> float:
    """Percent: mean over images of the mean normalised landmark error (the paper's NRMSE, normaliser stated)."""
    return float(100.0 * landmark_errors(pred, true, norm).mean(axis=1).mean())


def _per_image(err: np.ndarray) -> np.ndarray:
    """Accept per-image errors [N] or per-landmark errors [N, L] (averaged over landmarks)."""
    err = np.asarray(err, np.float64)
    return err.mean(axis=1) if err.ndim == 2 else err.reshape(-1)


def failure_rate(per_image_err: np.ndarray, threshold: float = 0.10) -> float:
    """Percent of images whose mean normalised error exceeds ``threshold`` (a fraction, 0.10 = 10 %)."""
    return float(100.0 * np.mean(_per_image(per_image_err) > threshold))


def ced(per_image_err: np.ndarray, max_err: float = 0.10, steps: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution: x = error thresholds in [0, max_err], y = fraction of images with error ≤ x."""
    err = np.sort(_per_image(per_image_err))
    x = np.linspace(0.0, max_err, steps)
    return x, np.searchsorted(err, x, side="right") / len(err)


def auc_ced(per_image_err: np.ndarray, max_err: float = 0.10) -> float:
    """Area under the CED on [0, max_err] divided by max_err (0..1), computed exactly rather than on a grid.

    ∫₀ᴹ 1[e ≤ x] dx = max(0, M − e), so the area is the mean of clip(1 − e/M, 0, 1) over images.
    """
    return float(np.mean(np.clip(1.0 - _per_image(per_image_err) / max_err, 0.0, 1.0)))


def rank1(embeddings: np.ndarray, labels: np.ndarray, block: int = 1024) -> float:
    """Fraction (0..1) of samples whose nearest other sample (Euclidean) shares their identity.

    Samples whose identity occurs once are excluded (they cannot be right) but still serve as
    neighbours of the others. Distances are computed ``block`` rows at a time, so memory is
    O(block × N) rather than O(N²). NaN if no identity has two samples.
    """
    emb = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if len(emb) != len(labels):
        raise ValueError(f"{len(emb)} embeddings but {len(labels)} labels")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    queries = np.flatnonzero(counts[inverse] > 1)
    if len(queries) == 0:
        return float("nan")
    sq = np.einsum("ij,ij->i", emb, emb)
    hits = 0
    for start in range(0, len(queries), block):
        rows = queries[start:start + block]
        d = sq[rows, None] + sq[None, :] - 2.0 * emb[rows] @ emb.T  # squared distances; same order as Euclidean
        d[np.arange(len(rows)), rows] = np.inf  # never one's own neighbour
        hits += int(np.sum(labels[np.argmin(d, axis=1)] == labels[rows]))
    return hits / len(queries)


def pair_distances(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """[N] Euclidean distance between row i of ``emb_a`` and row i of ``emb_b``."""
    return np.linalg.norm(np.asarray(emb_a, np.float64) - np.asarray(emb_b, np.float64), axis=-1)


def _best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """Threshold t maximising the accuracy of "same iff distance < t"; candidates are midpoints of the
    sorted distinct distances plus one below and one above them all; ties go to the smallest t."""
    u = np.unique(distances)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]])
    pos, neg = np.sort(distances[same]), np.sort(distances[~same])
    correct = np.searchsorted(pos, cands, side="left") + len(neg) - np.searchsorted(neg, cands, side="left")
    return float(cands[np.argmax(correct)])


def pair_accuracy_10fold(distances: np.ndarray, same: np.ndarray, folds: int = 10) -> tuple[float, float]:
    """LFW protocol: (mean, population std) over contiguous folds of the accuracy on each held-out fold
    of the threshold chosen to maximise accuracy on the other folds. Fractions 0..1."""
    distances = np.asarray(distances, np.float64).reshape(-1)
    same = np.asarray(same, bool).reshape(-1)
    if len(distances) != len(same) or len(distances) < folds:
        raise ValueError(f"need as many labels as distances and at least {folds} pairs, "
                         f"got {len(distances)} distances and {len(same)} labels")
    accs = []
    for held in np.array_split(np.arange(len(distances)), folds):
        train = np.ones(len(distances), bool)
        train[held] = False
        t = _best_threshold(distances[train], same[train])
        accs.append(np.mean((distances[held] < t) == same[held]))
    return float(np.mean(accs)), float(np.std(accs))


def roc(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of "same iff distance ≤ threshold": thresholds are -inf then each distinct distance ascending,
    so fpr/tpr run from (0, 0) to (1, 1)."""
    distances = np.asarray(distances, np.float64).reshape(-1)
    same = np.asarray(same, bool).reshape(-1)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both same and different pairs, got {n_pos} same and {n_neg} different")
    thresholds = np.concatenate([[-np.inf], np.unique(distances)])
    tpr = np.searchsorted(np.sort(distances[same]), thresholds, side="right") / n_pos
    fpr = np.searchsorted(np.sort(distances[~same]), thresholds, side="right") / n_neg
    return fpr, tpr, thresholds


def tar_at_far(distances: np.ndarray, same: np.ndarray, far: float = 1e-3) -> float:
    """TAR (0..1) at the largest threshold whose FAR ≤ ``far``, without interpolation.

    With fewer than 1/far different pairs the only FAR ≤ far reachable is 0, so this is the TAR at the
    strict threshold that accepts no different pair: a pessimistic figure, never an extrapolated one.
    """
    fpr, tpr, _ = roc(distances, same)
    return float(tpr[np.flatnonzero(fpr <= far)[-1]])


def all_pairs_tar_at_far(emb: np.ndarray, labels: np.ndarray, far: float = 1e-3, max_images: int = 3000,
                         seed: int = 0) -> tuple[float | None, int, int]:
    """(TAR at ``far``, same pairs, different pairs) over every pair i < j of the images, the way IJB-style
    benchmarks count: a few hundred pairs.txt pairs hold too few different pairs for FAR 1e-3 to mean
    anything. Above ``max_images`` images a seeded subset of them is used (its pairs still number millions).
    TAR is None without a same pair or with fewer than 10 / ``far`` different pairs (ten false accepts)."""
    emb = np.asarray(emb, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), size=max_images, replace=False))
        emb, labels = emb[keep], labels[keep]
    sq = np.sum(emb * emb, axis=1)
    i, j = np.triu_indices(len(labels), k=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T, 0.0))[i, j]
    same = labels[i] == labels[j]
    n_same, n_diff = int(same.sum()), int((~same).sum())
    if n_same == 0 or n_diff < 10 / far:
        return None, n_same, n_diff
    return tar_at_far(dist, same, far), n_same, n_diff


def balanced_pairs(labels: np.ndarray, n_pairs: int, seed: int) -> list[tuple[int, int, bool]]:
    """``n_pairs // 2`` same-identity and as many different-identity pairs (i < j, no repeats), alternating
    same/different so every contiguous fold is balanced as LFW's are; deterministic by ``seed``.

    If the data has fewer distinct same (or different) pairs, both halves shrink to that number to stay balanced.
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    groups = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    pair_counts = counts * (counts - 1) // 2
    total_same = int(pair_counts.sum())
    total_diff = len(labels) * (len(labels) - 1) // 2 - total_same
    k = min(n_pairs // 2, total_same, total_diff)

    def sample(total: int, enumerate_all, draw) -> list[tuple[int, int]]:
        """k distinct (i, j) pairs, i < j, uniformly from a pool of ``total``; ``draw`` may reject with None."""
        # Rejection sampling is fast while k is a small share of the pool; otherwise enumerate and choose.
        if 2 * k > total:
            pool = enumerate_all()
            return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
        chosen: dict[tuple[int, int], None] = {}  # insertion-ordered set
        while len(chosen) < k:
            pair = draw()
            if pair is not None:
                chosen[pair] = None
        return list(chosen)

    def all_same() -> list[tuple[int, int]]:
        return [(int(a), int(b)) for g in groups for x, a in enumerate(g) for b in g[x + 1:]]

    def draw_same() -> tuple[int, int]:
        g = groups[rng.choice(len(groups), p=pair_counts / total_same)]  # weighted so pairs are uniform
        i, j = np.sort(rng.choice(len(g), size=2, replace=False))
        return int(g[i]), int(g[j])

    def all_diff() -> list[tuple[int, int]]:
        i, j = np.triu_indices(len(labels), k=1)
        keep = labels[i] != labels[j]
        return list(zip(i[keep].tolist(), j[keep].tolist()))

    def draw_diff() -> tuple[int, int] | None:
        i, j = np.sort(rng.integers(len(labels), size=2))
        return (int(i), int(j)) if labels[i] != labels[j] else None

    same_pairs = sample(total_same, all_same, draw_same) if k else []
    diff_pairs = sample(total_diff, all_diff, draw_diff) if k else []
    out: list[tuple[int, int, bool]] = []
    for (a, b), (c, d) in zip(same_pairs, diff_pairs):
        out += [(a, b, True), (c, d, False)]
    return out
