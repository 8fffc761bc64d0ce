"""Stages: train each network of an experiment once, save it under its name, reuse it everywhere.

    runs/<task>/stages/<name>.weights.h5   the student (or teacher) network alone, never the Distiller
    runs/<task>/stages/<name>.json         its results record, training history and the shapes it needs
    runs/<task>/stages/<name>.eval.npz     evaluation arrays for plots (CED errors, ROC)
    runs/<task>/results.json|results.md    the experiment's table; training_curves.png, ced.png, roc.png
    runs/<task>/logs/<name>/               TensorBoard

A stage needs the stages it starts from (`init_from`) and learns from (`teacher`), in any task: alignment
asks for the classification teacher and the distilled classification students, which are trained first
when `runs/classify` lacks them and reused when it has them.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from typing import Callable, Dict, Optional

import numpy as np

from keras_kd import distribute, results
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.data.example import DataError, read_meta
from keras_kd.distill.distiller import Distiller
from keras_kd.keras import keras, tf
from keras_kd.models import resnet
from keras_kd.tasks import TASKS, Stage

# Shapes a saved stage must share with the current run to be reused.
COMPAT_KEYS = ("image_size", "num_classes", "width_divisor")


class StageError(RuntimeError):
    """A stage cannot be run or reused; the message says which and why."""


def _atomic_json(path: str, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


class Runner:
    def __init__(self, cfg: Config, strategy: Optional[tf.distribute.Strategy] = None,
                 log: Callable[[str], None] = print):
        self.cfg = cfg
        self.strategy = strategy or distribute.get_strategy(cfg.strategy)
        self.log = log
        self._plans: Dict[str, Dict[str, Stage]] = {}
        self._metas: Dict[str, dict] = {}
        self._records: Dict[tuple, dict] = {}

    # ---- data ----------------------------------------------------------------------------------
    def data_dir(self, task: str) -> str:
        src = (self.cfg.cls_data or self.cfg.data) if TASKS[task].uses_cls_data else self.cfg.data
        return self._synthetic() if src == "synthetic" else src

    def _synthetic(self) -> str:
        from keras_kd.data import synthetic
        c = self.cfg
        path = os.path.join(c.model_dir, "data",
                            f"synthetic-{c.synthetic_identities}x{c.synthetic_images}-{c.synthetic_size}px")
        if not os.path.exists(os.path.join(path, "meta.json")):
            self.log(f"[data] generating synthetic faces into {path}")
            synthetic.write_synthetic(path, c.synthetic_identities, c.synthetic_images, c.synthetic_size,
                                      seed=0, log=self.log)
        return path

    def meta(self, task: str) -> dict:
        d = self.data_dir(task)
        if d not in self._metas:
            self._metas[d] = read_meta(d)
        return self._metas[d]

    @property
    def num_classes(self) -> int:
        """Every network keeps the classification head, so its size comes from the classification data."""
        return int(self.meta("classify")["num_classes"])

    # ---- plans and paths ----------------------------------------------------------------------
    def plan(self, task: str) -> Dict[str, Stage]:
        if task not in self._plans:
            t = TASKS[task]
            try:
                self._plans[task] = {s.name: s for s in t.plan(self.cfg)}
            except ValueError as e:
                raise StageError(f"{task} plan: {e}") from None
            for spec, why in t.skipped_methods(self.cfg):
                self.log(f"[plan] {task}: --methods={spec} skipped: {why}")
        return self._plans[task]

    def stage(self, task: str, name: str) -> Stage:
        try:
            return self.plan(task)[name]
        except KeyError:
            raise StageError(f"stage {task}/{name} is not part of the {task} plan with these flags") from None

    def path(self, stage: Stage, suffix: str) -> str:
        return os.path.join(self.cfg.model_dir, stage.task, "stages", stage.name + suffix)

    def build(self, stage: Stage) -> keras.Model:
        return resnet.build_model(stage.width_divisor, self.cfg.image_size, self.num_classes,
                                  TASKS[stage.task].heads, self.cfg.embedding_dim, name=stage.name)

    # ---- running -------------------------------------------------------------------------------
    def ensure(self, task: str, name: str) -> dict:
        """The stage's record: read back when saved and compatible, trained (with its needs) otherwise."""
        if (task, name) in self._records:
            return self._records[task, name]
        stage = self.stage(task, name)
        self._records[task, name] = record = self._reuse_or_train(stage)
        return record

    def _reuse_or_train(self, stage: Stage) -> dict:
        task, name = stage.task, stage.name
        record_path = self.path(stage, ".json")
        if os.path.exists(record_path) and os.path.exists(self.path(stage, ".weights.h5")) \
                and not self.cfg.overwrite:
            with open(record_path) as f:
                record = json.load(f)
            self._check_compatible(stage, record)
            self.log(f"[stage] {task}/{name}: reusing {self.path(stage, '.weights.h5')} "
                     f"({_fmt(record.get('metrics', {}))})")
            return record
        for dep in (stage.init_from, stage.teacher):
            if dep is not None:
                self.ensure(*dep)
        return self._train(stage)

    def _check_compatible(self, stage: Stage, record: dict) -> None:
        want = {"image_size": self.cfg.image_size, "num_classes": self.num_classes,
                "width_divisor": stage.width_divisor}
        bad = [f"{k}={record.get(k)} (now {want[k]})" for k in COMPAT_KEYS if record.get(k) != want[k]]
        if bad:
            raise StageError(f"{self.path(stage, '.json')}: saved with {', '.join(bad)}; use another "
                             "--model_dir or --overwrite")

    def load(self, task: str, name: str) -> keras.Model:
        stage = self.stage(task, name)
        model = self.build(stage)
        path = self.path(stage, ".weights.h5")
        try:
            model.load_weights(path)
        except (OSError, ValueError) as e:
            raise StageError(f"{path}: cannot load weights ({str(e).splitlines()[0]})") from None
        return model

    def _initial(self, stage: Stage, model: keras.Model) -> None:
        copied = []
        if stage.init_from is not None:
            copied = resnet.transfer_weights(self.load(*stage.init_from), model)
            self.log(f"[stage] {stage.task}/{stage.name}: initialized {len(copied)} layers from "
                     f"{'/'.join(stage.init_from)}")
        TASKS[stage.task].init_heads(model, copied, self.data_dir(stage.task), self.cfg)

    def _train(self, stage: Stage) -> dict:
        cfg, task = self.cfg, TASKS[stage.task]
        keras.utils.set_random_seed(cfg.seed)  # per stage: a stage's result does not depend on run order
        meta = self.meta(stage.task)
        data_dir = self.data_dir(stage.task)
        train_cfg = task.batch_config(cfg, training=True)
        if train_cfg.pk and train_cfg.pk[0] > int(meta["num_classes"]):
            raise StageError(f"--ids_per_batch={train_cfg.pk[0]} but {data_dir} has only "
                             f"{meta['num_classes']} identities")
        steps = max(1, int(meta["splits"]["train"]) // train_cfg.batch_size)
        self.log(f"[stage] {stage.task}/{stage.name}: training {stage.epochs} epochs × {steps} steps "
                 f"(init {stage.init}, targets {dict(stage.targets) or 'none'}, lr {stage.lr})")
        with self.strategy.scope():
            student = self.build(stage)
            self._initial(stage, student)
            teacher = self.load(*stage.teacher) if stage.teacher else None
            distiller = Distiller(student, teacher, task.task_loss(stage, cfg) if stage.task_loss else None,
                                  stage.targets, config=cfg)
            bounds = [steps * e for e in range(cfg.lr_decay_epochs, stage.epochs, cfg.lr_decay_epochs)]
            schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
                bounds, [stage.lr * cfg.lr_decay_factor ** i for i in range(len(bounds) + 1)]) if bounds else stage.lr
            distiller.compile(keras.optimizers.SGD(schedule, momentum=cfg.momentum, nesterov=True,
                                                   weight_decay=cfg.weight_decay or None),
                              steps_per_execution=cfg.steps_per_execution)
        ds = self.strategy.distribute_datasets_from_function(
            lambda ctx: pipeline.make_dataset(data_dir, "train", train_cfg, training=True, input_context=ctx))
        logs = os.path.join(cfg.model_dir, stage.task, "logs", stage.name)
        callbacks = [keras.callbacks.TerminateOnNaN(),
                     keras.callbacks.TensorBoard(logs, update_freq="epoch", profile_batch=0)]
        t0 = time.time()
        with _naming_bad_records(data_dir):
            history = distiller.fit(ds, epochs=stage.epochs, steps_per_epoch=steps, callbacks=callbacks,
                                    verbose=cfg.verbose)
        seconds = time.time() - t0
        hist = {k: [float(v) for v in vs] for k, vs in history.history.items()}
        if any(not np.isfinite(v[-1]) for v in hist.values()):
            raise StageError(f"stage {stage.task}/{stage.name}: loss became NaN/Inf; weights not saved "
                             "(lower the learning rate?)")
        with _naming_bad_records(data_dir):
            metrics, artifacts = task.evaluate(student, data_dir, cfg) if stage.evaluate else ({}, {})
        record = {
            "name": stage.name, "role": stage.role, "width_divisor": stage.width_divisor,
            "init": stage.init, "targets": [n for n, _ in stage.targets], "method": stage.method,
            "alpha": stage.weight_of("soft"), "beta": stage.weight_of("hidden"),
            "params": resnet.count_params(student), "flops": resnet.count_flops(student),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "epochs": stage.epochs, "train_seconds": round(seconds, 1), "seed": cfg.seed,
            "image_size": cfg.image_size, "num_classes": self.num_classes, "evaluate": stage.evaluate,
            "history": hist,
        }
        if stage.task == "verify":
            record["softmax"] = stage.softmax
        if distribute.is_chief(self.strategy):
            self._save(stage, student, record, artifacts)
        self.log(f"[stage] {stage.task}/{stage.name}: {stage.epochs} epochs in {seconds:.0f}s, loss "
                 f"{hist['loss'][0]:.3f} → {hist['loss'][-1]:.3f}; {_fmt(record['metrics'])}")
        return record

    def _save(self, stage: Stage, model: keras.Model, record: dict, artifacts: dict) -> None:
        """Weights first, record last (each via temp file + rename): a record means the weights are whole."""
        os.makedirs(os.path.dirname(self.path(stage, "")), exist_ok=True)
        weights = self.path(stage, ".weights.h5")
        tmp = self.path(stage, ".partial.weights.h5")  # the suffix picks the format
        model.save_weights(tmp)
        os.replace(tmp, weights)
        arrays = {"errors": artifacts["errors"]} if "errors" in artifacts else {}
        if "roc" in artifacts:
            arrays.update(roc_fpr=artifacts["roc"][0], roc_tpr=artifacts["roc"][1])
        if arrays:
            np.savez(self.path(stage, ".eval.npz"), **arrays)
        _atomic_json(self.path(stage, ".json"), record)

    def _artifacts(self, stage: Stage) -> dict:
        path = self.path(stage, ".eval.npz")
        if not os.path.exists(path):
            return {}
        z = np.load(path)
        out = {"errors": z["errors"]} if "errors" in z else {}
        if "roc_fpr" in z:
            out["roc"] = (z["roc_fpr"], z["roc_tpr"])
        return out

    def run(self, task: str) -> dict:
        """Every stage of the task's experiment, then its results.json, results.md and plots."""
        records = [self.ensure(task, name) for name in self.plan(task)]
        out_dir = os.path.join(self.cfg.model_dir, task)
        res = results.Results.load(os.path.join(out_dir, "results.json"))
        res.data.update(task=task, data=self.meta(task)["name"], preset=self.cfg.preset, seed=self.cfg.seed)
        for rec in records:
            if rec.get("evaluate", True):
                res.upsert({k: v for k, v in rec.items() if k not in ("history", "evaluate")})
        if distribute.is_chief(self.strategy):
            res.save()
            results.write_markdown(res.data, os.path.join(out_dir, "results.md"))
            results.write_methods(self.cfg.model_dir)  # <model_dir>/methods.md, across tasks
            results.plot_history({r["name"]: r["history"] for r in records},
                                 os.path.join(out_dir, "training_curves.png"))
            stages = [s for s in self.plan(task).values() if s.evaluate]
            TASKS[task].plots({s.name: self._artifacts(s) for s in stages}, out_dir)
        return res.data


@contextlib.contextmanager
def _naming_bad_records(data_dir: str):
    """Turns tf.data's anonymous read/decode errors into a DataError naming the file and record.

    Only when a bad record is found: any other error of these types is a bug to see with its traceback.
    """
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
        culprit = next(filter(None, (pipeline.find_bad_record(data_dir, s) for s in ("train", "test"))), None)
        if culprit is None:
            raise
        raise DataError(culprit) from None


def _fmt(metrics: dict) -> str:
    keys = [k for k in ("top1", "pair_acc", "nrmse", "failure_rate", "rank1") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys) or "not evaluated"

