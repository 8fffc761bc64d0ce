"""The export of a run's trained stages: load, write every format, verify, install, record.

    python -m export --model_dir=runs --task=align [--models=a,b] [--formats=...] [--qat] [--prune=0.5]
    records = export.run(runner, task)          # from Python / main.py, after runner.run(task)

Per exported model, under ``<model_dir>/<task>/export/<name>/``:

    saved_model/<version>/     signatures serving_default, serving_uint8, serving_bytes, serving_crop
                               (export/saved_model.py); verified after loading against the Keras model
    tflite/model_<kind>.tflite fp32, fp16, dynamic, int8; qat_int8 (--qat); pruned_fp32 (--prune)
                               (export/tflite.py), each evaluated on the test split with LiteRT
    export.json                the record below

Only the student network is exported, never the Distiller, its adapters or the teacher (unless named in
``models``). A model's files are written into a hidden staging directory beside it and moved into place
only when everything succeeded and verified, so a failed export leaves no partial directory.

The record of a model (returned, saved as export.json, and merged into results.json as ``record["export"]``)::

    {"name", "task", "version", "weights", "weights_sha256", "options", "image_size", "resize_size",
     "data", "face_align" (the data's name and its alignment, null if none: what the inputs must look like),
     "keras": {<metric>}, "saved_model": {"path", "signatures", "size_bytes", "max_abs_diff", "checks"},
     "tflite_fp32" | "tflite_fp16" | "tflite_dynamic" | "tflite_int8" | "qat_int8" | "pruned_fp32":
         {"path", "size_bytes", <metric>, "max_abs_diff", "seconds", "latency_ms", ...}}

``latency_ms``: median LiteRT time of one single-image call with 1 thread (export.tflite.latency_ms).
Every architecture of keras_kd.models.archs exports the same way (the record's model is rebuilt with the
stage record's "arch" and "width").

<metric> is the task's headline metric (classify top1, align nrmse, verify rank1) on the whole test split.
results.json also gets flat keys in each exported model's ``metrics`` — ``<format>_<metric>`` and
``<format>_kb`` (e.g. ``tflite_int8_top1``, ``tflite_int8_kb``), plus ``pruned_sparsity`` — which
results.md shows in its "All models" table.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence

from keras_kd import distribute, io, results
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.data.example import parse_example, shard_paths
from keras_kd.keras import keras, tf
from keras_kd.models import archs
from keras_kd.stages import Runner
from keras_kd.tasks import TASKS, Stage

from export import saved_model, tflite
from export.saved_model import ExportError

# The one list of export formats: the SavedModel and a .tflite file per tflite.KINDS.
FORMATS = ("saved_model",) + tuple(f"tflite_{kind}" for kind in tflite.KINDS)
DEFAULT_FORMATS = FORMATS
EXPORT_FILE = "export.json"
# Bumped when the same checkpoint and options would give other files, so that older exports are not reused.
# 2: PReLU as max(x, α·x), MobileNetV3's hard-swish unfused (export.int8_ops).
EXPORTER_VERSION = 2
VERIFY_SAMPLES = 8

def run(runner: Runner, task: str, models: Optional[Sequence[str]] = None,
        formats: Sequence[str] = DEFAULT_FORMATS, qat: bool = False, prune: float = 0.0, version: int = 1,
        int8_io: bool = False, qat_epochs: int = 1, prune_epochs: int = 2, representative_samples: int = 100,
        update_results: bool = True, overwrite: bool = False) -> Dict[str, dict]:
    """Exports ``models`` of ``task`` (default: ``default_models``) and returns {name: export record}.

    Each model is reused when its export.json records the same checkpoint (sha256), options and
    EXPORTER_VERSION, unless ``overwrite``. With ``update_results`` the records are merged into
    results.json/results.md.
    Raises ExportError (bad checkpoint, mismatching export; optimize.OptimizeError is one) or DataError.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ExportError(f"unknown export format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    if int(version) < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    if prune and not 0.0 < prune < 1.0:
        raise ExportError(f"prune: target sparsity must be in (0, 1), got {prune}")
    if not distribute.is_chief(runner.strategy):
        return {}  # one writer: the chief exports, other workers of a multi-worker run are done
    names = list(models) if models else default_models(runner, task)
    if not names:
        raise ExportError(f"{runner.cfg.model_dir}/{task}: no trained student to export")
    options = {"formats": sorted(formats), "qat": bool(qat), "prune": float(prune), "version": int(version),
               "int8_io": bool(int8_io), "qat_epochs": int(qat_epochs), "prune_epochs": int(prune_epochs),
               "representative_samples": int(representative_samples)}
    if qat:
        check_qat(runner, task, names)
    records = {name: _export_one(runner, task, name, options, overwrite) for name in names}
    if update_results:
        merge_into_results(runner.cfg.model_dir, task, records)
    return records


def check_qat(runner: Runner, task: str, names: Sequence[str]) -> None:
    """Before any export: OptimizeError (one line naming the architecture and the layer types) when a model
    has layers tfmot cannot quantize, so that ``qat`` fails at once rather than after the other formats."""
    from export import optimize  # tensorflow-model-optimization only when asked for: seconds to import
    for name in names:
        model, stage, _ = load_stage(runner, task, name)
        optimize.check_quantizable(model, stage.arch)


def default_models(runner: Runner, task: str) -> List[str]:
    """The students of this run's plan that were evaluated (the ones results.json reports): every
    student, not only the distilled ones, so that each row of the table has its deployable version."""
    return [s.name for s in runner.plan(task).values() if s.role == "student" and s.evaluate]


def stage_students(model_dir: str, task: str) -> List[str]:
    """Every evaluated student saved under ``<model_dir>/<task>/stages`` (the CLI's default, which has no
    run plan): records with role "student" and evaluate true that have weights."""
    names = []
    for path in sorted(glob.glob(os.path.join(model_dir, task, "stages", "*.json"))):
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue  # reported when (and if) that model is exported by name
        name = os.path.basename(path)[:-len(".json")]
        if rec.get("role") == "student" and rec.get("evaluate", True) and \
                os.path.exists(path[:-len(".json")] + ".weights.h5"):
            names.append(name)
    return names


def saved_model_dir(model_dir: str, task: str, name: str, version: int = 1) -> str:
    return os.path.join(model_dir, task, "export", name, "saved_model", str(int(version)))


# ------------------------------------------------------------------------------------------ one model

def load_stage(runner: Runner, task: str, name: str):
    """(model with weights, Stage, record) of a saved stage, or ExportError naming the bad file.

    Works for any saved stage, also one outside the current flags' plan (the CLI re-creates no plan):
    the network is rebuilt from the record's width divisor with Runner.build.
    """
    base = os.path.join(runner.cfg.model_dir, task, "stages", name)
    weights, record_path = base + ".weights.h5", base + ".json"
    if not os.path.exists(weights):
        raise ExportError(f"{weights}: checkpoint missing (train it: python main.py --task={task})")
    try:
        with open(record_path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise ExportError(f"{record_path}: stage record missing (the stage did not finish)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{record_path}: unreadable stage record ({e})") from None
    # The data too: an export evaluates its files and calibrates int8 on it (e.g. a run of synthetic faces
    # version 1, exported after version 2 came: its config.json's "synthetic" now means version 2).
    want = {"image_size": runner.cfg.image_size, "num_classes": runner.num_classes,
            "data": record.get("data") and runner.meta(task)["name"]}  # a record without "data" is not checked
    diff = [f"{k}={record.get(k)} (now {v})" for k, v in want.items() if record.get(k) != v]
    if diff:
        hint = " (pass --data=DIR of the data it was trained on)" if want["data"] != record.get("data") else ""
        raise ExportError(f"{record_path}: saved with {', '.join(diff)}{hint}")
    stage = runner.plan(task).get(name) or Stage(
        task, name, int(record["width_divisor"]), str(record.get("init", "")), int(record.get("epochs", 1)),
        runner.cfg.lr_init, softmax=bool(record.get("softmax", False)), arch=record.get("arch", archs.DEFAULT),
        width=float(record.get("width", 1.0)))
    model = runner.build(stage)  # outside the run's strategy: export is a single-process step
    try:
        model.load_weights(weights)
    except Exception as e:  # h5py raises OSError, KeyError or ValueError on damaged files
        flags = ", ".join("--" + f for f in TASKS[task].shape_flags)
        hint = f" (trained with {flags}? pass the same)" if flags else ""
        raise ExportError(f"{weights}: cannot load weights ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:200]}){hint}") from None
    return model, stage, record


def teacher_of(stage: Stage) -> tuple:
    """The frozen teacher QAT and pruning distill from: the task's teacher (its softmax variant for
    verification's softmax students), whatever the stage itself was trained with."""
    return TASKS[stage.task].teacher_stage(stage)


def verification_samples(data_dir: str, cfg: Config, task: str, n: int = VERIFY_SAMPLES) -> List[dict]:
    """The first ``n`` test images of the evaluation pipeline with their original file bytes and size."""
    ds = pipeline.make_dataset(data_dir, "test", TASKS[task].batch_config(cfg, training=False), training=False)
    crops, sources = [], []
    for images, targets in ds:
        crops += list(images.numpy())
        sources += [s.decode() for s in targets["source"].numpy()]
        if len(crops) >= n:
            break
    crops, sources = crops[:n], sources[:n]
    wanted, raw = set(sources), {}
    for path in shard_paths(data_dir, "test"):
        for rec in tf.data.TFRecordDataset(path).map(parse_example):
            src = rec["source"].numpy().decode()
            if src in wanted:
                raw[src] = (rec["image"].numpy(), (int(rec["height"]), int(rec["width"])))
        if len(raw) == len(wanted):
            break
    return [{"crop": c, "encoded": raw[s][0], "hw": raw[s][1], "source": s} for c, s in zip(crops, sources)]


def _export_one(runner: Runner, task: str, name: str, options: dict, overwrite: bool) -> dict:
    cfg, log = runner.cfg, runner.log
    base = os.path.join(cfg.model_dir, task, "export")
    export_dir = os.path.join(base, name)
    model, stage, _ = load_stage(runner, task, name)  # before any directory is made
    weights = os.path.join(cfg.model_dir, task, "stages", name + ".weights.h5")
    sha = io.sha256_file(weights)
    previous = _read_json(os.path.join(export_dir, EXPORT_FILE))
    if previous and not overwrite and previous.get("weights_sha256") == sha and previous.get("options") == options \
            and previous.get("exporter") == EXPORTER_VERSION and all(os.path.exists(p) for p in _paths(previous)):
        log(f"[export] {task}/{name}: reusing {export_dir} (same checkpoint, options and exporter)")
        return _add_latency(previous, os.path.join(export_dir, EXPORT_FILE))
    data_dir = runner.data_dir(task)
    os.makedirs(base, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=base)
    try:
        record = _build(runner, task, name, model, stage, data_dir, staging, options)
        record.update(weights=weights, weights_sha256=sha, options=options, exporter=EXPORTER_VERSION)
        io.write_json(os.path.join(staging, EXPORT_FILE), _relocate(record, staging, export_dir))
        _install(staging, export_dir, options)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = _read_json(os.path.join(export_dir, EXPORT_FILE))
    log(f"[export] {task}/{name}: {_summary(record, task)}")
    return record


def _build(runner: Runner, task: str, name: str, model: keras.Model, stage: Stage, data_dir: str,
           staging: str, options: dict) -> dict:
    """Writes every requested file of one model into ``staging``; returns its record (staging paths)."""
    cfg, log = runner.cfg, runner.log
    size = cfg.image_size
    metric = tflite.HEADLINE[task]
    meta = runner.meta(task)
    record = {"name": name, "task": task, "version": options["version"], "image_size": size,
              "resize_size": saved_model.resize_size(size), "outputs": list(TASKS[task].serving_output_names),
              # what the inputs must look like: the data it learned from, its faces aligned or not
              "data": meta["name"], "face_align": meta.get("face_align")}
    sm_path = os.path.join(staging, "saved_model", str(options["version"]))
    log(f"[export] {task}/{name}: SavedModel, verified against Keras → "
        f"{saved_model_dir(cfg.model_dir, task, name, options['version'])}")
    saved_model.save(model, task, size, sm_path)
    checks = saved_model.verify(sm_path, model, task, size, verification_samples(data_dir, cfg, task))
    record["saved_model"] = {"path": sm_path, "signatures": list(saved_model.SIGNATURES),
                             "size_bytes": _tree_size(sm_path),
                             "max_abs_diff": max(v for k, v in checks.items() if not k.endswith("_mismatches")),
                             "checks": checks}
    if "saved_model" not in options["formats"]:
        record.pop("saved_model")
    tfl_dir = os.path.join(staging, "tflite")
    os.makedirs(tfl_dir)
    rep = tflite.representative_dataset(data_dir, cfg, task, options["representative_samples"])
    paths = {}
    for kind in tflite.kinds_from_formats(options["formats"]):
        paths[f"tflite_{kind}"] = _write(os.path.join(tfl_dir, f"model_{kind}.tflite"),
                                         tflite.convert(sm_path, kind, rep, options["int8_io"]))
    extra, keras_models = {}, {}
    if options["qat"] or options["prune"]:
        from export import optimize  # tensorflow-model-optimization only when asked for: seconds to import
        teacher, _, _ = load_stage(runner, *teacher_of(stage))
    if options["qat"]:
        student, _, _ = load_stage(runner, task, name)  # fresh copy: tfmot wraps the layers it is given
        log(f"[export] {task}/{name}: quantization-aware training, {options['qat_epochs']} epoch(s) with KD")
        qmodel, info = optimize.qat(student, teacher, stage, data_dir, cfg, options["qat_epochs"])
        tmp = optimize.temp_savedmodel(qmodel, task, size, staging)
        paths["qat_int8"] = _write(os.path.join(tfl_dir, "model_qat_int8.tflite"),
                                   tflite.convert(tmp, "int8", rep, options["int8_io"]))
        optimize.remove_tree(tmp)
        extra["qat_int8"] = info
        keras_models["qat_keras"] = qmodel
    if options["prune"]:
        student, _, _ = load_stage(runner, task, name)
        log(f"[export] {task}/{name}: magnitude pruning to {options['prune']:.0%}, "
            f"{options['prune_epochs']} epoch(s) with KD")
        pmodel, info = optimize.prune(student, teacher, stage, data_dir, cfg, options["prune_epochs"],
                                      options["prune"])
        tmp = optimize.temp_savedmodel(pmodel, task, size, staging)
        paths["pruned_fp32"] = _write(os.path.join(tfl_dir, "model_pruned_fp32.tflite"), tflite.convert(tmp, "fp32"))
        dense = paths.get("tflite_fp32") or _write(os.path.join(staging, "dense_fp32.tflite"),
                                                   tflite.convert(sm_path, "fp32"))
        optimize.remove_tree(tmp)
        info.update(gzip_bytes=optimize.gzip_size(paths["pruned_fp32"]),
                    dense_gzip_bytes=optimize.gzip_size(dense))
        extra["pruned_fp32"] = info
        keras_models["pruned_keras"] = pmodel
    if paths:
        log(f"[export] {task}/{name}: evaluating {', '.join(paths)} on the test split with LiteRT")
    evals = tflite.evaluate(paths, model, task, data_dir, cfg, keras_models)
    record["keras"] = evals["keras"]
    for label, path in paths.items():
        record[label] = {"path": path, "size_bytes": os.path.getsize(path), **evals[label],
                         **extra.get(label, {}), "io": tflite.signature_io(path)}
        if label in ("qat_int8", "pruned_fp32"):
            record[label][f"keras_{metric}"] = evals[label.split("_")[0] + "_keras"][metric]
    fp32 = record.get("tflite_fp32")
    if fp32 and not fp32["max_abs_diff"] <= saved_model.TOLERANCE:
        log(f"[export] warning: {task}/{name}: fp32 TFLite differs from Keras by {fp32['max_abs_diff']:.3g}")
    return record


def _add_latency(record: dict, path: str) -> dict:
    """An export.json written before ``latency_ms`` existed gets it for each of its .tflite files (measured
    now; the files are the same), so that a reused record has every key a new one has."""
    missing = [k for k in EXPORTED_KINDS if k in record and "latency_ms" not in record[k]]
    if not missing:
        return record
    for kind in missing:
        record[kind]["latency_ms"] = tflite.latency_ms(record[kind]["path"])
    io.write_json(path, record)
    return record


def _paths(record) -> List[str]:
    """Every file or directory a record names (its "path" values)."""
    if isinstance(record, dict):
        return [v for k, v in record.items() if k == "path" and isinstance(v, str)] + \
            [p for v in record.values() for p in _paths(v)]
    return []


def _write(path: str, data: bytes) -> str:
    io.write_bytes(path, data)
    return path


def _tree_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _relocate(obj, old: str, new: str):
    """Staging paths in the record → the paths the files will have once installed."""
    if isinstance(obj, dict):
        return {k: _relocate(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relocate(v, old, new) for v in obj]
    if isinstance(obj, str) and obj.startswith(old + os.sep):
        return new + obj[len(old):]
    return obj


def _install(staging: str, export_dir: str, options: dict) -> None:
    """Moves the staged files into ``export_dir``: the SavedModel version directory and the tflite
    directory (when this export made .tflite files) are each swapped in by rename, export.json last.
    Other SavedModel versions stay."""
    os.makedirs(export_dir, exist_ok=True)
    moves = [("tflite", os.path.join(staging, "tflite"))] if os.listdir(os.path.join(staging, "tflite")) else []
    if "saved_model" in options["formats"]:
        moves.append((os.path.join("saved_model", str(options["version"])),
                      os.path.join(staging, "saved_model", str(options["version"]))))
    for rel, src in moves:
        dest = os.path.join(export_dir, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        old = None
        if os.path.exists(dest):
            old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(dest))
            os.replace(dest, os.path.join(old, "x"))
        os.replace(src, dest)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    os.replace(os.path.join(staging, EXPORT_FILE), os.path.join(export_dir, EXPORT_FILE))


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------ results.json

EXPORTED_KINDS = FORMATS[1:] + ("qat_int8", "pruned_fp32")  # the .tflite files a record can have


def flat_metrics(record: dict, task: str) -> Dict[str, float]:
    """The flat keys merged into a model's results.json ``metrics``: ``<format>_<metric>``, ``<format>_kb``
    for every .tflite file, and ``pruned_sparsity`` (measured)."""
    metric = tflite.HEADLINE[task]
    out = {}
    for kind in EXPORTED_KINDS:
        rec = record.get(kind)
        if rec:
            out[f"{kind}_{metric}"] = float(rec[metric])
            out[f"{kind}_kb"] = round(rec["size_bytes"] / 1024.0, 1)
    if "pruned_fp32" in record:
        out["pruned_sparsity"] = float(record["pruned_fp32"]["sparsity"])
    return out


def merge_into_results(model_dir: str, task: str, records: Dict[str, dict]) -> None:
    """Adds each record to its model in ``<model_dir>/<task>/results.json`` (``record["export"]`` and the
    flat metric keys) and rewrites results.md. Models results.json does not list are left out."""
    path = os.path.join(model_dir, task, "results.json")
    if not os.path.exists(path):
        return
    res = results.Results.load(path)
    for name, rec in records.items():
        m = res.get(name)
        if m is None:
            continue
        stale = [k for k in m["metrics"] if any(k.startswith(p + "_") for p in EXPORTED_KINDS + ("pruned",))]
        for k in stale:
            del m["metrics"][k]
        m["metrics"].update(flat_metrics(rec, task))
        m["export"] = rec
    res.save()
    results.write_markdown(res.data, os.path.join(model_dir, task, "results.md"))


def _summary(record: dict, task: str) -> str:
    metric = tflite.HEADLINE[task]
    parts = [f"keras {metric} {record['keras'][metric]:.4g}"]
    if "saved_model" in record:
        parts.append(f"SavedModel max diff {record['saved_model']['max_abs_diff']:.2g}")
    for kind in EXPORTED_KINDS:
        if kind in record:
            r = record[kind]
            parts.append(f"{kind} {r['size_bytes'] / 1024:.0f} kB {metric} {r[metric]:.4g}"
                         + (f" {r['latency_ms']:.3g} ms" if "latency_ms" in r else ""))
    if "pruned_fp32" in record:
        parts.append(f"sparsity {record['pruned_fp32']['sparsity']:.3f}")
    return "; ".join(parts)
