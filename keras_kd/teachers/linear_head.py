"""Logits for a teacher that only has an embedding: a linear softmax head fitted on its embeddings.

    python -m keras_kd.teachers.linear_head FILE DATA_DIR [--out=FILE2] [--folds=5] [--l2=1e-4]

A face-recognition teacher (dlib's descriptor, an ArcFace model) outputs embeddings, not the data's classes,
so the soft-target terms (`soft`, `dkd`, `dist`) have nothing to read. This fits softmax regression from the
L2-normalised embedding to the data's identity labels and adds ``out_logits`` to the teacher-outputs file.

Train records get **cross-fitted** logits: each fold's from a head fitted on the other folds, so a record's
soft target is what the teacher-plus-head predicts for a face it has not been fitted on — a head fitted on
all records would return near one-hot targets for its own training faces and carry no dark knowledge. Test
records get the logits of a head fitted on every train record.
"""
from __future__ import annotations

import argparse
import sys
from typing import Tuple

import numpy as np
from scipy import optimize

from keras_kd.data.example import DataError, read_meta
from keras_kd.teachers import outputs as outputs_lib


def fit(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-4, maxiter: int = 300) -> Tuple[np.ndarray, np.ndarray]:
    """(W [D, C], b [C]) of softmax regression with an L2 penalty on W, by L-BFGS."""
    n, d = x.shape
    onehot = np.eye(classes, dtype=np.float64)[y]

    def loss_grad(theta):
        w, b = theta[:d * classes].reshape(d, classes), theta[d * classes:]
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.sum(onehot * np.log(p + 1e-12)) / n + 0.5 * l2 * np.sum(w * w)
        g = (p - onehot) / n
        return loss, np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(axis=0)])

    res = optimize.minimize(loss_grad, np.zeros(d * classes + classes), jac=True, method="L-BFGS-B",
                            options={"maxiter": maxiter})
    return res.x[:d * classes].reshape(d, classes), res.x[d * classes:]


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def add_logits(path: str, data_dir: str, out: str = "", folds: int = 5, l2: float = 1e-4, seed: int = 0,
               log=print) -> dict:
    """Writes `out` (default: `path`) with out_logits added; returns {"cv_top1": ..., "test_top1": ...}."""
    meta, sources, splits, outs = outputs_lib.read(path)
    if "embedding" not in outs:
        raise DataError(f"{path}: has no out_embedding to fit a head on")
    if "logits" in outs:
        raise DataError(f"{path}: already has out_logits")
    classes = int(read_meta(data_dir)["num_classes"])
    index = {s: i for i, s in enumerate(sources.tolist())}
    train = outputs_lib.data_records(data_dir, "train")
    outputs_lib.load(path, data_dir, "train")  # the checks: same data, every train record present
    rows = np.array([index[s] for s in train["source"]])
    x, y = _unit(outs["embedding"][rows].astype(np.float64)), train["label"]
    # A file with flipped views (key suffix FLIP) gets the same heads' logits of them too.
    views = [v for v in ("", outputs_lib.FLIP) if "embedding" + v in outs]
    logits = {v: np.zeros((len(sources), classes), np.float32) for v in views}

    def predict(v, at, w, b):
        logits[v][at] = _unit(outs["embedding" + v][at].astype(np.float64)) @ w + b

    fold = np.random.default_rng(seed).permutation(len(rows)) % folds
    correct = 0
    for k in range(folds):
        w, b = fit(x[fold != k], y[fold != k], classes, l2)
        for v in views:
            predict(v, rows[fold == k], w, b)
        correct += int(np.sum(logits[""][rows[fold == k]].argmax(1) == y[fold == k]))
    w, b = fit(x, y, classes, l2)
    test = np.array([i for i, s in enumerate(splits) if s == "test"], np.int64)
    if len(test):
        for v in views:
            predict(v, test, w, b)
    stats = {"cv_top1": correct / len(rows)}
    recs = outputs_lib.data_records(data_dir, "test")
    known = set(train["label"].tolist())
    tl = {s: l for s, l in zip(recs["source"], recs["label"])}
    seen = [i for i in test if tl.get(sources[i]) in known]
    if seen:
        stats["test_top1_seen_identities"] = float(np.mean([logits[""][i].argmax() == tl[sources[i]] for i in seen]))
    # Not the "hidden" that read() derives from the embedding when the file has none.
    derived = {"hidden" + v: outs.get("embedding" + v) for v in views}
    save = {k: v for k, v in outs.items() if not (k in derived and v is derived[k])}
    save.update({"logits" + v: z for v, z in logits.items()})
    extra = {k: v for k, v in meta.items() if k not in ("format", "version", "data", "data_meta_sha256", "teacher")}
    extra["logits"] = (f"linear softmax head on the unit embedding, L2 {l2:g}; train records {folds}-fold "
                       f"cross-fitted, test records from the head fitted on all train records")
    outputs_lib.save(out or path, sources, splits, save, data_dir, teacher=meta.get("teacher", ""), **extra)
    log(f"[linear head] {out or path}: out_logits over {classes} classes; cross-fitted train top-1 "
        f"{100 * stats['cv_top1']:.1f} %")
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m keras_kd.teachers.linear_head", description=__doc__.splitlines()[0])
    p.add_argument("file", help="a teacher-outputs file with out_embedding")
    p.add_argument("data_dir", help="the converted data it was written for")
    p.add_argument("--out", default="", help="where to write (default: FILE)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--l2", type=float, default=1e-4)
    a = p.parse_args(argv)
    try:
        add_logits(a.file, a.data_dir, a.out, a.folds, a.l2)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
