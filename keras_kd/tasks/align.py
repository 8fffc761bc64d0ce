"""Face alignment (Section 4.1, Table 3): 5 landmarks regressed from K, Eq. 6-7."""
from __future__ import annotations

import os

import numpy as np

from keras_kd import metrics, plots, results
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.data.example import META_FILE, DataError
from keras_kd.distill import losses
from keras_kd.distill.losses import LANDMARK_UNITS
from keras_kd.metrics import LEFT_EYE, RIGHT_EYE
from keras_kd.keras import tf
from keras_kd.tasks.base import Stage, input_config, predict
from keras_kd.tasks.transfer import TABLE_INITS, TransferTask, ab_header, init_by_ab_rows

EXAMPLES = 12  # test faces drawn in alignment_examples.png
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


def example_indices(n: int) -> np.ndarray:
    """Which of n test faces (with landmarks, in split order) the picture draws: spread over the split, whose
    records come grouped by identity, so that the faces are of different people."""
    return np.unique(np.linspace(0, n - 1, min(EXAMPLES, n)).round().astype(int))


class Align(TransferTask):
    name = "align"
    headline = "nrmse"
    lower_is_better = True
    heads = ("landmarks",)
    uses_labels = False
    percent_metrics = ("nrmse", "failure_rate")
    table_metrics = ("nrmse", "failure_rate")
    cache_metrics = ("nrmse",)
    labels = {"nrmse": "NRMSE %", "failure_rate": "failure % (>10%)"}
    model_output_keys = serving_output_names = ("landmarks",)
    draws_landmarks = True

    def batch_config(self, cfg: Config, training: bool) -> pipeline.InputConfig:
        return input_config(cfg, cfg.align_batch_size)

    def settings(self, stage, cfg):
        return {"landmark_head": cfg.landmark_head}

    def cacheable_outputs(self, cfg):
        # The spatial and heatmap heads' K is a map of the crop: the centre crop's is about as far from the
        # shifted, flipped view's as another face's is (docs/performance.md), so a K target trains online.
        return super().cacheable_outputs(cfg) if cfg.landmark_head == "pooled" else ("logits",)

    def task_loss(self, stage: Stage, cfg: Config):
        def loss(y, s):
            # Images without landmarks (mixed data sets) contribute nothing.
            mask = tf.cast(y["has_landmarks"], tf.float32)
            return mask * losses.landmark_l2(y["landmarks"], s["landmarks"])
        return loss

    def init_heads(self, model, copied, data_dir, cfg):
        """A fresh regression layer starts at the mean training shape (its bias), not at the crop centre.

        From the centre, SGD at the paper's rates needs many epochs just to reach the mean shape; starting
        there, training begins at the mean-shape baseline and every step is spent on what varies.
        """
        if "landmarks_fc" in copied or "landmarks_fc" not in {l.name for l in model.layers}:
            return
        fc = model.get_layer("landmarks_fc")
        kernel, _ = fc.get_weights()
        mean = mean_shape(data_dir, cfg)
        fc.set_weights([kernel, (LANDMARK_UNITS * (mean - 0.5)).reshape(-1).astype(np.float32)])

    def eval_metrics(self, stage):
        def nrmse(y, s):
            """metrics.nrmse batch by batch: each image's mean landmark error over its inter-ocular distance."""
            true, pred = y["landmarks"], s["landmarks"]
            eyes = tf.norm(true[:, LEFT_EYE] - true[:, RIGHT_EYE], axis=-1)
            keep = tf.logical_and(tf.cast(y["has_landmarks"], tf.bool), eyes > 0)
            err = tf.reduce_mean(tf.norm(pred - true, axis=-1), axis=-1) / tf.where(keep, eyes, 1.0)
            return 100.0 * err, tf.cast(keep, tf.float32)
        return {"nrmse": nrmse}

    def evaluate(self, model, data_dir, cfg, split="test"):
        ds = pipeline.make_dataset(data_dir, split, self.batch_config(cfg, False), training=False)
        out, tgt = predict(model, ds, ["landmarks"])
        if not tgt["has_landmarks"].astype(bool).any():
            raise ValueError(f"{data_dir}: the {split} split has no landmarks to evaluate alignment on")
        pred, true = _with_landmarks(out, tgt)
        per_image = metrics.landmark_errors(pred, true, "interocular").mean(axis=1)
        idx = example_indices(len(pred))
        return self.metrics(out, tgt), {"errors": per_image, "examples": pred[idx], "example_index": idx}

    def metrics(self, outputs, targets):
        """On the images with landmarks: NRMSE (inter-ocular; and by the box diagonal), failure rate and
        CED AUC at 10 %, and each landmark's NRMSE."""
        pred, true = _with_landmarks(outputs, targets)
        per_point = metrics.landmark_errors(pred, true, "interocular")
        per_image = per_point.mean(axis=1)
        m = {"nrmse": metrics.nrmse(pred, true, "interocular"),
             "nrmse_diag": metrics.nrmse(pred, true, "diagonal"),
             "failure_rate": metrics.failure_rate(per_image, 0.10),
             "auc10": metrics.auc_ced(per_image, 0.10)}
        m.update({f"nrmse_{n}": float(100 * per_point[:, i].mean()) for i, n in enumerate(LANDMARK_NAMES)})
        return m

    def serving_outputs(self, raw, size, offset, to_input):
        """Landmarks [N, 5, 2] (x, y) in the input image's pixels (crop and resize undone), or the crop's."""
        crop_px = raw["landmarks"] * float(size)
        if to_input is None:
            return {"landmarks": crop_px}
        return {"landmarks": (crop_px + float(offset)) * to_input}

    def expected_serving_outputs(self, raw, image_size, input_hw=None):
        px = raw["landmarks"] * image_size
        if input_hw is not None:
            px = (px + _crop_geometry(image_size)[1]) * _to_input(input_hw, image_size)
        return {"landmarks": px.astype(np.float32)}

    def serving_units(self, image_size, input_hw=None):
        if input_hw is None:
            return {"landmarks": np.float32(image_size)}
        return {"landmarks": (image_size * _to_input(input_hw, image_size)).astype(np.float32)}

    def prediction_row(self, outputs, i):
        return {"landmarks": np.round(outputs["landmarks"][i], 2).tolist()}

    def csv_fields(self, row):
        return {f"{a}{j + 1}": v for j, p in enumerate(row["landmarks"]) for a, v in zip("xy", p)}

    def tables(self, models):
        """Table 3 per student width (init × α:β, NRMSE), then every alignment metric per model."""
        teacher = results.teacher_of(models)
        out: list = []
        for d in results.widths(models):
            cands = [m for m in results.paper_students(models)
                     if m["width_divisor"] == d and m["init"] in TABLE_INITS]
            if not cands:
                continue
            out += ([""] if out else []) + [f"## Table 3 shape, student /{d}: NRMSE % (lower is better); "
                                            f"teacher {results.cell(teacher, 'nrmse')}", ""]
            out += results.table(["init"] + ab_header(cands), init_by_ab_rows(cands, d, "nrmse"))
        return out + results.per_model_table("Alignment metrics per model (nrmse, failure rate: lower is better)",
                                             models, ["nrmse", "nrmse_diag", "failure_rate", "auc10"])

    def plots(self, artifacts, out_dir, models=(), data_dir="", cfg=None):
        curves = {n: a["errors"] for n, a in artifacts.items() if "errors" in a}
        if not curves:
            return []
        path = os.path.join(out_dir, "ced.png")
        plots.plot_ced(curves, path, max_err=0.10)
        paths = [path]
        if data_dir and cfg is not None:
            paths += self._examples_plot(artifacts, out_dir, list(models), data_dir, cfg)
        return paths

    def _examples_plot(self, artifacts, out_dir, models, data_dir, cfg) -> list:
        """Test faces with the true landmarks, the teacher's and the best student's (best on the val split
        when the records have it: the test faces drawn did not choose it)."""
        teacher = next((m["name"] for m in models if m.get("role") == "teacher"), None)
        best, by = results.best_students(models, self.headline, self.lower_is_better)
        score = {m["name"]: m.get("metrics", {}).get(self.headline) for m in models}
        chosen = {m["name"]: ((m.get("val_metrics") if by == "val" else m.get("metrics")) or {}).get(self.headline)
                  for m in models}

        def label(role, name):
            who = role if name == role else f"{role} {name}"
            return f"{who}, NRMSE {score[name]:.1f} %" if score.get(name) is not None else who
        shown = {label("teacher", teacher): teacher} if teacher else {}
        if best:
            top = min(best, key=lambda n: chosen[n])
            shown[f"{label('student', top)} (chosen on {by})"] = top
        shown = {k: n for k, n in shown.items() if "examples" in artifacts.get(n, {})}
        if not shown:
            return []
        # Which faces each model's examples are: saved with them (records before 2026-12-05: the first ones).
        index = {n: artifacts[n].get("example_index", np.arange(len(artifacts[n]["examples"])))
                 for n in shown.values()}
        idx = next(iter(index.values()))
        if not len(idx) or any(not np.array_equal(i, idx) for i in index.values()):
            return []  # the two models' examples are of different faces: nothing to draw side by side
        ds = pipeline.make_dataset(data_dir, "test", self.batch_config(cfg, False), training=False)
        images, true = [], []
        for x, t in ds:
            keep = t["has_landmarks"].numpy()
            images.append(x.numpy()[keep])
            true.append(t["landmarks"].numpy()[keep])
            if sum(map(len, true)) > idx.max():  # the faces drawn are read: the rest of the split is not needed
                break
        images, true = np.concatenate(images), np.concatenate(true)
        if idx.max() >= len(true):
            return []
        images, true = images[idx], true[idx]
        s = cfg.image_size
        points = {"true": true * s, **{k: artifacts[n]["examples"] * s for k, n in shown.items()}}
        path = os.path.join(out_dir, "alignment_examples.png")
        plots.plot_alignment_examples((images * 255).round().astype(np.uint8), points, path)
        return [path]


def _crop_geometry(image_size: int) -> tuple:
    """(R, offset): the side the evaluation pipeline resizes the whole image to, and its centre crop's corner."""
    resize = pipeline.InputConfig(image_size=image_size, batch_size=1).resize_size
    return resize, (resize - image_size) // 2


def _to_input(input_hw, image_size: int) -> np.ndarray:
    """(x, y) factors [N, 1, 2] from resized-image pixels to the pixels of input images of ``input_hw``."""
    return np.asarray(input_hw, np.float64)[:, ::-1][:, None, :] / _crop_geometry(image_size)[0]


def _with_landmarks(outputs: dict, targets: dict) -> tuple:
    """(predicted, true) landmarks of the images that have them (mixed data sets have some without)."""
    keep = np.asarray(targets["has_landmarks"]).astype(bool)
    return outputs["landmarks"][keep], targets["landmarks"][keep]


def _landmarks(data_dir: str, split: str, cfg: Config, limit: int) -> np.ndarray:
    """Crop-normalized landmarks of up to `limit` un-augmented images of a split that have them."""
    in_cfg = Align().batch_config(cfg, False)
    ds = pipeline.make_dataset(data_dir, split, in_cfg, training=False)
    # The whole resized image, in crop-normalized units of the centre crop: where every landmark must lie.
    off = (in_cfg.resize_size - cfg.image_size) // 2
    lo, hi = -off / cfg.image_size - 1e-3, (in_cfg.resize_size - off) / cfg.image_size + 1e-3
    out, n = [], 0
    for _, t in ds:
        keep = t["has_landmarks"].numpy()
        points = t["landmarks"].numpy()
        bad = keep & ((points < lo) | (points > hi)).any(axis=(1, 2))
        if bad.any():
            raise DataError(f"{data_dir}: {split} image {t['source'].numpy()[bad.argmax()].decode()} has landmarks "
                            "outside the image (reconvert it: the converter checks them)")
        out.append(points[keep])
        n += len(out[-1])
        if n >= limit:
            break
    if not n:
        raise ValueError(f"{data_dir}: no {split} image has landmarks")
    return np.concatenate(out)[:limit]


_MEAN_SHAPES: dict = {}


def mean_shape(data_dir: str, cfg: Config, limit: int = 2000) -> np.ndarray:
    """The mean training shape [5, 2] (crop-normalized), from up to `limit` training images.

    Read once per process for the same data and input settings: every stage with a new landmark head asks
    for it, and each read decodes `limit` images. The data's meta.json (rewritten by every conversion) is
    in the key, so data converted again in the same place is read again.
    """
    try:
        st = os.stat(os.path.join(data_dir, META_FILE))
    except OSError:  # no meta.json: the pipeline will say what is wrong
        return _landmarks(data_dir, "train", cfg, limit).mean(axis=0)
    key = (os.path.abspath(data_dir), st.st_mtime_ns, st.st_size, Align().batch_config(cfg, False), limit)
    if key not in _MEAN_SHAPES:
        _MEAN_SHAPES[key] = _landmarks(data_dir, "train", cfg, limit).mean(axis=0)
    return _MEAN_SHAPES[key].copy()


def mean_shape_nrmse(data_dir: str, cfg: Config) -> float:
    """NRMSE of always predicting the mean training shape: the bar a trained model must clear."""
    true = _landmarks(data_dir, "test", cfg, 10**9)
    return metrics.nrmse(np.broadcast_to(mean_shape(data_dir, cfg, 10**9), true.shape), true, "interocular")
