"""Run a trained stage or an exported SavedModel on a folder of images: `python main.py --mode=predict`.

    python main.py --task=align --mode=predict --images=DIR [--model=STAGE|EXPORT_DIR] [--predict_dir=OUT]

Both kinds of model go through the same serving graph (export/saved_model.py: resize, centre crop,
network, outputs in input pixels), so a stage predicts exactly what its export will. `--model` empty is
the best student of the task's results.json. Written to OUT (default `<model_dir>/<task>/predict/`):

    predictions.json   one record per image: {"image", "height", "width", <outputs>}
    predictions.csv    the same, one row per image (landmarks x1,y1..x5,y5; class_id, probability;
                       embedding e0..eD)
    <stem>.png         align: the image with its predicted landmarks drawn

A model that learned from faces aligned on 5 points (`convert --face_align`: its export.json or its run's
data says so) gets each image aligned the same way first (keras_kd/data/face_align.py, needs dlib).
"""
from __future__ import annotations

import csv
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from keras_kd import io
from keras_kd.keras import tf
from keras_kd.tasks import TASKS

from export.saved_model import ExportError, ServingModule

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def list_images(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        raise ExportError(f"{folder}: --images must be a folder of images, and it does not exist")
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise ExportError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it")
    return paths


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3]; a file that does not decode is one clear error naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except (OSError, tf.errors.OpError) as e:
        raise ExportError(f"{path}: not a readable image ({str(e).splitlines()[0][:120]})") from None


def serving_function(model_dir: str, task: str, model: str,
                     runner_factory: Callable) -> Tuple[Callable, str, Optional[dict]]:
    """(images float [N, H, W, 3] 0..255 → outputs, description, face alignment of its data or None) for a
    stage name or a SavedModel path."""
    if model and os.path.isdir(model):
        path = model
        versions = os.path.join(model, "saved_model")
        if os.path.isdir(versions):  # an export/<name> folder: its highest version
            numbered = sorted((int(v) for v in os.listdir(versions) if v.isdigit()), reverse=True)
            if not numbered:
                raise ExportError(f"{versions}: no version folder (1, 2, ...) with a SavedModel")
            path = os.path.join(versions, str(numbered[0]))
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise ExportError(f"{model}: not a SavedModel (no saved_model.pb) nor an export folder")
        fn = tf.saved_model.load(path).signatures["serving_default"]
        return (lambda images: {k: v.numpy() for k, v in fn(image=tf.constant(images)).items()}), path, \
            _export_alignment(path)
    runner = runner_factory()
    if not model:
        from keras_kd.results import Results
        res = Results.load(os.path.join(model_dir, task, "results.json"))
        best = TASKS[task].best_students(res.models)
        if not best:
            raise ExportError(f"{model_dir}/{task}/results.json: no trained student (run python main.py "
                              f"--task={task} first, or pass --model)")
        model = best[-1]  # the narrowest width's best student: what a phone ships
    from export import load_stage
    keras_model, _, _ = load_stage(runner, task, model)
    module = ServingModule(keras_model, task, runner.cfg.image_size)
    return (lambda images: {k: v.numpy() for k, v in module.serving_default(tf.constant(images)).items()}), model, \
        runner.meta(task).get("face_align")


def _export_alignment(saved_model_path: str) -> Optional[dict]:
    """The face alignment recorded in the export.json of an export folder's SavedModel (saved_model/N)."""
    from export.run import EXPORT_FILE
    record = os.path.join(os.path.dirname(os.path.dirname(os.path.normpath(saved_model_path))), EXPORT_FILE)
    if not os.path.exists(record):
        return None
    with open(record) as f:
        return json.load(f).get("face_align")


def aligner(face_align: Optional[dict], used: str):
    """An image → aligned chip function for a model of aligned faces; None for any other model."""
    if not face_align:
        return None
    from keras_kd.data import face_align as fa
    try:
        return fa.Aligner(face_align["size"], face_align["padding"])
    except fa.DlibMissing:
        raise ExportError(f"{used}: learned from faces aligned on 5 points (--face_align); aligning these images "
                          "needs dlib: pip install -r requirements-teachers.txt") from None


def _row(task: str, out: Dict[str, np.ndarray], i: int) -> Dict[str, object]:
    return TASKS[task].prediction_row(out, i)


def _csv_fields(task: str, rec: dict) -> Dict[str, object]:
    return TASKS[task].csv_fields(rec)


def run(images_dir: str, model_dir: str, task: str, model: str, out_dir: str, runner_factory: Callable,
        batch: int = 32) -> str:
    """Predicts every image of `images_dir`; returns the predictions.json path."""
    from keras_kd import plots
    paths = list_images(images_dir)
    fn, used, alignment = serving_function(model_dir, task, model, runner_factory)
    align = aligner(alignment, used)
    out_dir = out_dir or os.path.join(model_dir, task, "predict")
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        pics = [read_image(p) for p in chunk]
        pics = [align(img) for img in pics] if align else pics
        # One call per image size (the signature takes any size, but one size per batch).
        for p, img in zip(chunk, pics):
            out = fn(img[None].astype(np.float32))
            rec = {"image": os.path.basename(p), "height": int(img.shape[0]), "width": int(img.shape[1]),
                   **_row(task, out, 0)}
            records.append(rec)
            if TASKS[task].draws_landmarks:
                stem = os.path.splitext(os.path.basename(p))[0]
                plots.draw_landmarks(img, {"predicted": np.asarray(rec["landmarks"])},
                                     os.path.join(out_dir, f"{stem}.png"))
    path = os.path.join(out_dir, "predictions.json")
    io.write_json(path, {"task": task, "model": used, "face_align": alignment, "predictions": records})
    with open(os.path.join(out_dir, "predictions.csv"), "w", newline="") as f:
        rows = [{"image": r["image"], "height": r["height"], "width": r["width"], **_csv_fields(task, r)}
                for r in records]
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
