"""`--mode=evaluate`: measure already trained models on another data set, without training.

    python main.py --task=align --mode=evaluate --model_dir=runs/real/seed0 --eval_data=data/my_faces

For every model of `<model_dir>/<task>/results.json` it loads the saved weights, runs the task's own
evaluation (the same code as after training) on the test split of `--eval_data` (convert a set with
`--all_test` to evaluate on all of it; records keep their `val_metrics`, of the training data's val split,
so the best student is the one chosen at training), and writes `<model_dir>/<task>/eval_<name>.json` (results.json's
schema) and `eval_<name>.md` (the same tables), `<name>` being the eval directory's name; CED/ROC plots go
to `<model_dir>/<task>/eval_<name>/`.

What each task needs of the data: align, landmarks; verify, identity labels (rank-1, pairs); classify,
the training data's identities for top-1 (other identities still give the pair accuracy on the hidden
layer, and top-1 is left out, with a log line).
"""
from __future__ import annotations

import os
import re
from typing import Callable

from keras_kd import results
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.data.example import DataError, read_meta
from keras_kd.keras import keras
from keras_kd.models import archs, precision
from keras_kd.stages import StageError, synthetic_dir
from keras_kd.tasks import TASKS


def eval_name(eval_data: str) -> str:
    """The name of the eval files: the eval directory's name, reduced to file-name-safe characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(eval_data))) or "data"


def _check_data(task: str, meta: dict, eval_data: str) -> None:
    if not meta.get("splits", {}).get("test"):
        raise DataError(f"{eval_data}: its test split is empty; convert it with --all_test to evaluate on all of it")
    if task == "align" and not meta.get("has_landmarks"):
        raise DataError(f"{eval_data}: no landmarks, so alignment cannot be evaluated on it")
    if task == "verify" and int(meta.get("num_classes", 0)) < 2:
        raise DataError(f"{eval_data}: verification needs identity labels (found {meta.get('num_classes')} identity)")


def run(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Evaluates every model of the task in cfg.model_dir on cfg.eval_data; returns the eval results dict."""
    task = TASKS[cfg.task]
    out_dir = os.path.join(cfg.model_dir, cfg.task)
    trained_path = os.path.join(out_dir, "results.json")
    if not os.path.exists(trained_path):
        raise StageError(f"{trained_path}: no trained {cfg.task} models there; train them first "
                         f"(--mode=train) or give the --model_dir that holds them")
    trained = results.Results.load(trained_path).data
    meta = read_meta(cfg.eval_data)
    _check_data(cfg.task, meta, cfg.eval_data)
    same_classes = _class_names(trained, cfg) == meta.get("class_names")
    name = eval_name(cfg.eval_data)
    log(f"[evaluate] {cfg.task}: {len(trained['models'])} models of {out_dir} on the test split of "
        f"{cfg.eval_data} ({meta['splits']['test']} images, {meta['name']})")
    if cfg.task == "classify" and not same_classes:
        log(f"[evaluate] {cfg.eval_data}: other identities than the training data's, so top-1 is left out "
            "(pair accuracy on the hidden layer is measured)")
    records, artifacts, teachers = [], {}, {}
    for rec in trained["models"]:
        ecfg = cfg.replace(image_size=int(rec.get("image_size", cfg.image_size)))
        if rec.get("init") == "external":
            metrics, art = _external(rec, task, ecfg, teachers, log), {}
            if metrics is None:
                continue
        else:
            model = _load(rec, cfg, out_dir)
            with pipeline.naming_bad_records(cfg.eval_data):
                metrics, art = task.evaluate(model, cfg.eval_data, ecfg)
        if cfg.task == "classify" and not same_classes:
            metrics.pop("top1", None)
        keras.backend.clear_session()
        keep = {k: v for k, v in rec.items() if k not in ("metrics", "export", "train_seconds")}
        records.append({**keep, "metrics": {k: float(v) for k, v in metrics.items()}, "trained_on": trained["data"]})
        artifacts[rec["name"]] = art
        log(f"[evaluate] {rec['name']}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                      if k in (task.headline, "pair_acc", "nrmse_diag")))
    res = results.Results(os.path.join(out_dir, f"eval_{name}.json"), {
        "task": cfg.task, "data": meta["name"], "preset": trained.get("preset", ""), "seed": trained.get("seed", 0),
        "eval_data": os.path.abspath(cfg.eval_data), "trained_on": trained["data"], "models": records})
    res.save()
    results.write_markdown(res.data, os.path.join(out_dir, f"eval_{name}.md"))
    task.plots(artifacts, os.path.join(out_dir, f"eval_{name}"))
    log(f"[evaluate] wrote {res.path} and {os.path.join(out_dir, f'eval_{name}.md')}")
    return res.data


def _external(rec: dict, task, cfg: Config, teachers: dict, log: Callable[[str], None]):
    """A --teacher / --teacher_outputs teacher's metrics on the eval data, as training measured them; None (and
    a log line) when this run is not given that same teacher, or its file of outputs holds no eval images.
    `teachers` keeps the loaded teacher (and its file hash) per image size for the task's other teacher rows."""
    from keras_kd.teachers import external
    if not (cfg.teacher or cfg.teacher_outputs):
        log(f"[evaluate] {rec['name']}: left out: a teacher given at training (not saved in --model_dir); "
            "pass the same --teacher or --teacher_outputs to evaluate it")
        return None
    if cfg.image_size not in teachers:
        teachers[cfg.image_size] = external.ExternalTeacher(cfg)
    ext = teachers[cfg.image_size]
    if ext.identity != rec.get("teacher_source"):
        log(f"[evaluate] {rec['name']}: left out: {ext.path} is not the teacher it was trained with")
        return None
    try:
        with pipeline.naming_bad_records(cfg.eval_data):
            return ext.evaluate(task, cfg.eval_data, task.batch_config(cfg, training=False))
    except DataError as e:  # a file of outputs made for other data
        log(f"[evaluate] {rec['name']}: left out: {e}")
        return None


def _class_names(trained: dict, cfg: Config):
    """The identities of the classification data the models were trained with (their logits' classes)."""
    src = cfg.cls_data or cfg.data
    src = synthetic_dir(cfg, cfg.model_dir) if src == "synthetic" else src
    if not os.path.exists(os.path.join(src, "meta.json")):
        return None
    return read_meta(src).get("class_names")


def _load(rec: dict, cfg: Config, out_dir: str) -> keras.Model:
    path = os.path.join(out_dir, "stages", rec["name"] + ".weights.h5")
    if not os.path.exists(path):
        raise StageError(f"{path}: missing; results.json lists {rec['name']} but its weights are gone")
    model = archs.build_model(rec.get("arch", archs.DEFAULT), int(rec["width_divisor"]),
                              int(rec.get("image_size", cfg.image_size)), int(rec.get("num_classes", 0)),
                              TASKS[cfg.task].heads, cfg.embedding_dim, name=rec["name"],
                              landmark_head=rec.get("landmark_head", "pooled"), width=float(rec.get("width", 1.0)),
                              blocks=rec.get("resnet_blocks", ()),
                              compute=precision.of_role(rec.get("role", "student"), cfg.teacher_precision))
    try:
        model.load_weights(path)
    except (OSError, ValueError) as e:
        raise StageError(f"{path}: cannot load weights ({str(e).splitlines()[0]}); was it trained with "
                         "another --embedding_dim?") from None
    return model
