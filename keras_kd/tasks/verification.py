"""Embedding evaluation shared by verification and classification: rank-1 and pair accuracy."""
from __future__ import annotations

import numpy as np

from keras_kd import metrics
from keras_kd.data.example import read_pairs

MAX_GENERATED_PAIRS = 3000
MIN_PAIRS = 20


def pair_metrics(emb: np.ndarray, targets: dict, data_dir: str, seed: int, every_pair: bool = True):
    """10-fold pair accuracy, TAR@FAR=1e-3 and the ROC on the data's pairs.txt, else generated pairs; and
    TAR@FAR=1e-3 over every pair of the test images (``tar_at_far_1e-3_all``, unless ``every_pair`` is
    False), stable where pairs.txt is small.

    pairs.txt (LFW's protocol) is used when at least MIN_PAIRS of its pairs are in the test split;
    otherwise balanced same/different pairs are drawn from the test split with the run's seed.
    Returns (metrics, {"roc": (fpr, tpr)}).
    """
    sources = [s.decode() if isinstance(s, bytes) else str(s) for s in targets["source"]]
    index = {s: i for i, s in enumerate(sources)}
    pairs = [(index[a], index[b], same) for a, b, same in read_pairs(data_dir) if a in index and b in index]
    origin = "pairs.txt"
    if len(pairs) < MIN_PAIRS:  # none, or too few for 10 folds (a pairs.txt of other images, a small test split)
        pairs = metrics.balanced_pairs(targets["label"], MAX_GENERATED_PAIRS, seed)
        origin = "generated"
    tar_all, n_same, n_diff = metrics.all_pairs_tar_at_far(emb, targets["label"], 1e-3, seed=seed) if every_pair \
        else (None, 0, 0)
    every = {} if tar_all is None else {"tar_at_far_1e-3_all": tar_all, "same_pairs_all": float(n_same),
                                        "diff_pairs_all": float(n_diff)}
    if len(pairs) < MIN_PAIRS:
        return every, {}
    a, b, same = (np.asarray(x) for x in zip(*pairs))
    dist = metrics.pair_distances(emb[a], emb[b])
    same = same.astype(bool)
    acc, std = metrics.pair_accuracy_10fold(dist, same)
    fpr, tpr, _ = metrics.roc(dist, same)
    return ({"pair_acc": acc, "pair_acc_std": std, "tar_at_far_1e-3": metrics.tar_at_far(dist, same, 1e-3),
             "pairs": float(len(pairs)), **every}, {"roc": (fpr, tpr), "pairs_from": origin})
