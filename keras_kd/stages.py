"""Stages: train each network of an experiment once, save it under its name, reuse it everywhere.

    runs/<task>/stages/<name>.weights.h5   the student (or teacher) network alone, never the Distiller
    runs/<task>/stages/<name>.json         its results record, training history, shapes and signature
    runs/<task>/stages/<name>.eval.npz     evaluation arrays for plots (CED errors, ROC)
    runs/<task>/results.json|results.md    the experiment's table; training_curves.png, ced.png, roc.png
    runs/<task>/config.json                the whole Config of the run that wrote results.json
    runs/<task>/logs/<name>/               TensorBoard
    runs/<task>/backup/<name>/             training state of an unfinished stage (BackupAndRestore)
    runs/.workers/worker-<i>/              other workers' copies in a multi-worker run (distribute.py)

A stage needs the stages it starts from (`init_from`) and learns from (`teacher`), in any task: alignment
asks for the classification teacher and the distilled classification students, which are trained first
when `runs/classify` lacks them and reused when it has them.

A saved stage is reused only when its record's `signature` (everything that shaped its weights: targets and
their weights, epochs, learning rate and optimizer, the task's loss settings, batches, data, seed, and the
signatures of the stages it started from and learned from, nested) equals the one the current flags give;
otherwise the run stops and says which settings differ. A record without one (written before signatures)
cannot be vouched for and is refused the same way.

A killed run loses at most the work since the last backup: run the same command again and finished stages
are reused, the interrupted one resumes from its backup, the rest run as planned. Every file a later run
trusts is written to a temporary name and renamed, so a kill never leaves a half-written one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Callable, Dict, List, Optional

import numpy as np

from keras_kd import distribute, io, lanes, plots, results, stage_inputs, training
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.data.example import read_meta
from keras_kd.distill import methods, teacher_cache
from keras_kd.distill.distiller import Distiller
from keras_kd.keras import keras, tf
from keras_kd.models import archs, network, precision, resnet
from keras_kd.signatures import describe_changes, precision_hint, signature_changes
from keras_kd.tasks import TASKS, Stage
from keras_kd.teachers import external

# Shapes a saved stage must share with the current run to be reused.
CONFIG_FILE = "config.json"  # <model_dir>/<task>/config.json: the whole Config of the run (export reads it)
ARTIFACT_ARRAYS = ("errors", "examples", "example_index")  # a task's evaluation arrays kept in <stage>.eval.npz
COMPAT_KEYS = ("image_size", "num_classes", "width_divisor", "data")
# Settings that change what an interrupted stage's training is: a backup made with others is not resumed.
_BACKUP_KEYS = ("image_size", "seed", "optimizer", "lr_schedule", "warmup_epochs", "lr_decay_epochs",
                "lr_decay_factor", "momentum", "weight_decay", "landmark_head",
                "temperature", "tau2", "margin", "mining", "embedding_dim", "backup_steps",
                "steps_per_execution", "val_fraction")


class StageError(RuntimeError):
    """A stage cannot be run or reused; the message says which and why."""


def _arch_fields(stage: Stage, cfg: Config) -> dict:
    """A stage's architecture in its signature and record: absent for ResNet-50/d, so records saved before
    other architectures (and block counts) existed keep their signatures."""
    if stage.arch != archs.DEFAULT:
        return {"arch": stage.arch, "width": stage.width}
    return {} if tuple(cfg.resnet_blocks) == resnet.BLOCKS else {"resnet_blocks": list(cfg.resnet_blocks)}


class Runner:
    def __init__(self, cfg: Config, strategy: Optional[tf.distribute.Strategy] = None,
                 log: Callable[[str], None] = print):
        if os.path.isdir(os.path.join(cfg.model_dir, "stages")):
            raise StageError(f"{cfg.model_dir}: this is one task's output folder (it holds stages/), not a "
                             f"model_dir; pass its parent: --model_dir={os.path.dirname(os.path.abspath(cfg.model_dir))}")
        self.cfg = cfg
        self.strategy = strategy or distribute.get_strategy(cfg.strategy)
        self.worker = distribute.worker_id(self.strategy)
        # Where this process writes: the model_dir for the chief, a scratch copy for every other worker.
        self.root = cfg.model_dir if self.worker == 0 else os.path.join(
            cfg.model_dir, ".workers", f"worker-{self.worker}")
        self.log = log if self.worker == 0 else (lambda msg: log(f"[worker {self.worker}] {msg}"))
        self._plans: Dict[str, Dict[str, Stage]] = {}
        self._metas: Dict[str, dict] = {}
        self.inputs = stage_inputs.StageInputs(cfg, self.strategy, self.log)
        self._records: Dict[tuple, dict] = {}
        self._signatures: Dict[tuple, dict] = {}
        self._teacher_caches: Dict[str, teacher_cache.TeacherCache] = {}  # --teacher_cache=memory, by key
        self._networks: Dict[tuple, keras.Model] = {}  # saved stages read by later ones (_network)
        # --teacher / --teacher_outputs: the teacher of every teacher stage, none trained.
        self.external = external.ExternalTeacher(cfg) if (cfg.teacher or cfg.teacher_outputs) else None

    # ---- data ----------------------------------------------------------------------------------
    def data_dir(self, task: str) -> str:
        src = (self.cfg.cls_data or self.cfg.data) if TASKS[task].uses_cls_data else self.cfg.data
        return self._synthetic() if src == "synthetic" else src

    def _synthetic(self) -> str:
        from keras_kd.data import synthetic
        c = self.cfg
        path = synthetic_dir(c, self.root)
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
                # Students on cached teacher targets are NAME_tc, beside their online twins.
                stages = teacher_cache.cached_names(t.plan(self.cfg), self.cfg.teacher_cache, lambda r: {
                    s.name: s for s in TASKS[r[0]].plan(self.cfg)}.get(r[1]), self._cacheable)
            except ValueError as e:
                raise StageError(f"{task} plan: {e}") from None
            pk = t.batch_config(self.cfg, training=True).pk
            problem = pk and pipeline.pk_split_problem(*pk, self.strategy.num_replicas_in_sync)
            if problem:
                raise StageError(f"{task} plan: {problem}")
            self._plans[task] = {s.name: s for s in stages}
            if self.external is not None:
                for s in stages:
                    if s.distilled_from is not None:
                        self.external.check(s, self.num_classes)
            for what, why in t.skipped(self.cfg):
                self.log(f"[plan] {task}: {what} skipped: {why}")
        return self._plans[task]

    def stage(self, task: str, name: str) -> Stage:
        try:
            return self.plan(task)[name]
        except KeyError:
            raise StageError(f"stage {task}/{name} is not part of the {task} plan with these flags") from None

    def path(self, stage: Stage, suffix: str, root: Optional[str] = None) -> str:
        """A stage's file; the chief's copy unless `root` says otherwise."""
        return os.path.join(root or self.cfg.model_dir, stage.task, "stages", stage.name + suffix)

    def backup_dir(self, stage: Stage, root: Optional[str] = None) -> str:
        return os.path.join(root or self.cfg.model_dir, stage.task, "backup", stage.name)

    def build(self, stage: Stage) -> keras.Model:
        return archs.build_model(stage.arch, stage.width_divisor, self.cfg.image_size, self.num_classes,
                                 TASKS[stage.task].heads, self.cfg.embedding_dim, name=stage.name,
                                 landmark_head=self.cfg.landmark_head, width=stage.width,
                                 blocks=self.cfg.resnet_blocks, compute=self.compute(stage))

    def compute(self, stage: Stage) -> str:
        """What the stage's network computes in: --teacher_precision for teachers, float32 for students."""
        return precision.of_role(stage.role, self.cfg.teacher_precision)

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
        if self.external is not None and stage.role == "teacher":
            return self._external_record(stage)
        if self.saved(stage) and not self.cfg.overwrite:
            record = self.read_saved(stage)
            self.log(f"[stage] {task}/{name}: reusing {self.path(stage, '.weights.h5')} "
                     f"({_fmt(record.get('metrics', {}))})")
            return record
        for dep in stage.needs:
            self.ensure(*dep)
        return self._train(stage)

    def recorded(self, task: str, name: str) -> bool:
        return (task, name) in self._records

    def adopt(self, task: str, name: str) -> dict:
        """The saved record of a stage another process trained (and of its upstream stages), taken as this
        Runner's own: read and checked like a reused one, not logged (keras_kd/lanes.py)."""
        if (task, name) not in self._records:
            stage = self.stage(task, name)
            for dep in stage.needs:
                self.adopt(*dep)
            self._records[task, name] = self.read_saved(stage)
        return self._records[task, name]

    def saved(self, stage: Stage) -> bool:
        return os.path.exists(self.path(stage, ".json")) and os.path.exists(self.path(stage, ".weights.h5"))

    def read_saved(self, stage: Stage) -> dict:
        """The saved stage's record, refused in one line when it does not fit the current flags."""
        with open(self.path(stage, ".json")) as f:
            record = json.load(f)
        self._check_compatible(stage, record)
        self._check_same_teacher(stage, record)
        self._check_signature(stage, record)
        return record

    def _check_compatible(self, stage: Stage, record: dict) -> None:
        want = {"image_size": self.cfg.image_size, "num_classes": self.num_classes,
                "width_divisor": stage.width_divisor, "data": self.meta(stage.task)["name"]}
        bad = [f"{k}={record.get(k)!r} (now {want[k]!r})" for k in COMPAT_KEYS if record.get(k) != want[k]]
        if bad:
            raise StageError(f"{self.path(stage, '.json')}: saved with {', '.join(bad)}; use another "
                             "--model_dir or --overwrite")

    def _teacher_identity(self, stage: Stage) -> Optional[str]:
        """Which teacher a stage distils from: the external one's file hash, or the teacher stage."""
        if stage.distilled_from is None:
            return None
        if self.external is not None:
            return self.external.identity
        return "stage:" + "/".join(stage.teacher)

    def _check_same_teacher(self, stage: Stage, record: dict) -> None:
        want = self._teacher_identity(stage)
        old = "stage:" + "/".join(stage.distilled_from) if stage.distilled_from else None  # records before it
        if record.get("teacher_source", old) != want:
            raise StageError(f"{self.path(stage, '.json')}: distilled from {record.get('teacher_source')} "
                             f"(now {want}); use another --model_dir or --overwrite")

    def signature(self, stage: Stage) -> dict:
        """Everything that shaped the stage's weights, as the current flags give it (JSON types).

        Its init and teacher stages appear as their own signatures, nested (an external teacher as its
        identity), so a change anywhere upstream changes every stage downstream of it.
        """
        key = (stage.task, stage.name)
        if key in self._signatures:
            return self._signatures[key]
        cfg, task = self.cfg, TASKS[stage.task]
        train_cfg = task.batch_config(cfg, training=True)
        weights = dict(stage.targets)
        compute = self.compute(stage)
        sig = {"stage": f"{stage.task}/{stage.name}", "width_divisor": stage.width_divisor,
               **_arch_fields(stage, cfg),
               # absent in float32, so that records saved before bfloat16 teachers keep their signatures
               **({"precision": compute} if compute != "float32" else {}),
               "init": stage.init,
               "epochs": stage.epochs, "lr": stage.lr, "task_loss": stage.task_loss,
               "alpha": weights.pop("soft", 0.0), "beta": weights.pop("hidden", 0.0),
               **{f"target.{n}": w for n, w in weights.items()}}
        for name, _ in stage.targets:
            sig.update(methods.settings(name, cfg))
        sig.update(task.settings(stage, cfg))
        sig.update(training.settings(cfg))
        sig.update(image_size=cfg.image_size, batch_size=train_cfg.batch_size, augment=train_cfg.augment,
                   flip=train_cfg.flip, shuffle_buffer=train_cfg.shuffle_buffer)
        if train_cfg.pk:
            sig.update(ids_per_batch=train_cfg.pk[0], images_per_id=train_cfg.pk[1])
        sig.update(data=self.meta(stage.task)["name"], num_classes=self.num_classes, seed=cfg.seed)
        if cfg.val_fraction:  # it trains on the train split less the val records (none: as before the carve)
            sig.update(val_fraction=cfg.val_fraction, val_max_images=pipeline.MAX_VAL_IMAGES)
        for field, dep in self._deps(stage):
            upstream = self.stage(*dep)
            sig[field] = (self.external.identity if self.external is not None and upstream.role == "teacher"
                          else self.signature(upstream))
        self._signatures[key] = sig = json.loads(json.dumps(sig))
        return sig

    @staticmethod
    def _deps(stage: Stage) -> List[tuple]:
        """(field, stage ref) of the stages whose weights shape this one: its init, and its teacher when a
        target reads it."""
        return [(f, d) for f, d in (("init_from", stage.init_from),
                                    ("teacher", stage.distilled_from)) if d is not None]

    def _trained_signature(self, stage: Stage) -> dict:
        """The signature a freshly trained stage records: the current one, with the signatures its init and
        teacher stages actually carry (a teacher shared across --seeds carries the first seed's)."""
        sig = dict(self.signature(stage))
        for field, dep in self._deps(stage):
            if "signature" in self._records.get(dep, {}):
                sig[field] = self._records[dep]["signature"]
        return sig

    def _check_signature(self, stage: Stage, record: dict) -> None:
        label = f"{stage.task}/{stage.name}"
        if not isinstance(record.get("signature"), dict):
            raise StageError(f"stage {label}: saved without a signature (by a keras-kd before signatures), so "
                             "what it was trained with is unknown; use --overwrite to retrain or another "
                             "--model_dir")
        # With --seeds and shared teachers, a teacher stage was trained with the first seed (seeds.py).
        shared = bool(self.cfg.seeds) and self.cfg.share_teacher
        want = self.signature(stage)
        changes = signature_changes(record["signature"], want, shared)
        if changes:
            raise StageError(f"stage {label}: saved with {', '.join(describe_changes(changes, want['stage']))}; "
                             f"use --overwrite to retrain{precision_hint(changes)} or another --model_dir")

    def _external_record(self, stage: Stage) -> dict:
        """The external teacher's row: evaluated on the task's test split as far as its outputs allow."""
        task = TASKS[stage.task]
        data_dir = self.data_dir(stage.task)
        with pipeline.naming_bad_records(data_dir):
            m = self.external.evaluate(task, data_dir, task.batch_config(self.cfg, training=False))
        self.log(f"[stage] {stage.task}/{stage.name}: the teacher is {self.external.path} (not trained); "
                 f"{_fmt(m)}")
        return {"name": stage.name, "role": "teacher", "width_divisor": 1, "init": "external", "targets": [],
                "method": "none", "alpha": 0.0, "beta": 0.0, "params": self.external.params,
                "flops": self.external.flops, "metrics": m, "epochs": 0, "train_seconds": 0.0, "seed": self.cfg.seed,
                "image_size": self.cfg.image_size, "num_classes": self.num_classes,
                "data": self.meta(stage.task)["name"], "evaluate": True, "history": {},
                "teacher_source": self.external.identity}

    def load(self, task: str, name: str) -> keras.Model:
        stage = self.stage(task, name)
        if self.external is not None and stage.role == "teacher":
            return self.external.model()
        model = self.build(stage)
        # A worker reads its own copy when it has one: the chief's may still be being written.
        own = self.path(stage, ".weights.h5", self.root)
        path = own if os.path.exists(own) else self.path(stage, ".weights.h5")
        try:
            model.load_weights(path)
        except (OSError, ValueError) as e:
            raise StageError(f"{path}: cannot load weights ({str(e).splitlines()[0]})") from None
        return model

    def _network(self, task: str, name: str) -> keras.Model:
        """A saved stage's network as later stages read it (init source, teacher): loaded once per run, since
        a saved stage never changes and each load builds the network anew (1-2 s for a ResNet-50)."""
        if (task, name) not in self._networks:
            self._networks[task, name] = self.load(task, name)
        return self._networks[task, name]

    def _initial(self, stage: Stage, model: keras.Model, source: Optional[keras.Model]) -> None:
        copied = []
        if stage.init_from is not None:
            copy = network.select_weights if stage.init == "select" else network.transfer_weights
            copied = copy(source, model)
            self.log(f"[stage] {stage.task}/{stage.name}: initialized {len(copied)} layers from "
                     f"{'/'.join(stage.init_from)}")
        TASKS[stage.task].init_heads(model, copied, self.data_dir(stage.task), self.cfg)

    def _train(self, stage: Stage) -> dict:
        cfg, task = self.cfg, TASKS[stage.task]
        label = f"{stage.task}/{stage.name}"
        keras.utils.set_random_seed(cfg.seed)  # per stage: a stage's result does not depend on run order
        meta = self.meta(stage.task)
        data_dir = self.data_dir(stage.task)
        num_classes = int(meta["num_classes"]) if task.uses_labels else None
        train_cfg = task.batch_config(cfg, training=True)
        with pipeline.naming_bad_records(data_dir, num_classes):
            n_train, n_val, train_ids, val_ids = self.inputs.split_sizes(data_dir, meta, train_cfg, num_classes)
        if train_cfg.pk and train_cfg.pk[0] > train_ids:
            held = (f" left for training (--val_fraction={cfg.val_fraction} holds out {val_ids} more)"
                    if val_ids and pipeline.val_rule(data_dir, cfg.val_fraction).by == "identity" else "")
            raise StageError(f"--ids_per_batch={train_cfg.pk[0]} but {data_dir} has only {train_ids} identities{held}")
        steps = max(1, n_train // train_cfg.batch_size)
        self.log(f"[stage] {label}: training {stage.epochs} epochs × {steps} steps "
                 f"(init {stage.init}, targets {dict(stage.targets) or 'none'}, lr {stage.lr})"
                 + (f"; validating on {n_val} held-out train images" if n_val else ""))
        cache = self._teacher_cache(stage, data_dir, train_cfg)
        with self.strategy.scope():
            source = self._network(*stage.init_from) if stage.init_from else None
            teacher = self._network(*stage.distilled_from) if stage.distilled_from else None
            # Again, after the networks it reads: what the stage draws then does not depend on whether an
            # earlier stage of this run had already loaded them.
            keras.utils.set_random_seed(cfg.seed)
            student = self.build(stage)
            self._initial(stage, student, source)
            distiller = Distiller(student, teacher, task.task_loss(stage, cfg) if stage.task_loss else None,
                                  stage.targets, config=cfg,
                                  eval_metrics=task.eval_metrics(stage) if stage.evaluate and n_val else None)
        ds = self.inputs.train_dataset(data_dir, train_cfg, cache)
        validation = self.inputs.val_dataset(data_dir, task.batch_config(cfg, training=False), cache,
                                             n_val) if n_val else None
        backup = self._prepare_backup(stage, {
            "stage": dataclasses.asdict(stage), "steps": steps, "batch_size": train_cfg.batch_size,
            "data": meta["name"], "teacher_source": self._teacher_identity(stage),
            "signature": self._trained_signature(stage),
            **{k: getattr(cfg, k) for k in _BACKUP_KEYS}})

        def announce(epoch: int, step: int) -> None:
            at = f"epoch {epoch + 1}/{stage.epochs}" + (f", step {step + 1}/{steps}" if step else "")
            self.log(f"[stage] {label}: resuming at {at} from the backup in {backup}")

        with pipeline.naming_bad_records(data_dir, num_classes):
            fitted = training.fit_stage(
                distiller, cfg, stage.lr, ds, stage.epochs, steps, validation=validation, backup_dir=backup,
                history_path=os.path.join(self.backup_dir(stage, self.root), "history.json"), on_resume=announce,
                callbacks=[keras.callbacks.TensorBoard(os.path.join(self.root, stage.task, "logs", stage.name),
                                                       update_freq="epoch", profile_batch=0)],
                strategy=self.strategy, steps_per_execution=cfg.steps_per_execution)
        seconds, hist = fitted.seconds, fitted.history
        if fitted.nan is not None:
            epoch, step, loss = fitted.nan
            raise StageError(f"stage {label}: loss became {loss} at epoch {epoch + 1}, step {step + 1}/{steps}; "
                             "weights not saved (lower its learning rate: --lr_scratch / --lr_init)")
        with pipeline.naming_bad_records(data_dir, num_classes):
            metrics, artifacts = task.evaluate(student, data_dir, cfg) if stage.evaluate else ({}, {})
            # What models are chosen by: the test split above is only reported.
            val_metrics = task.evaluate(student, data_dir, cfg, split="val")[0] if stage.evaluate and n_val else {}
        record = {
            "name": stage.name, "role": stage.role, "width_divisor": stage.width_divisor, "arch": stage.arch,
            "width": stage.width, "network": archs.student_tag(stage.arch, stage.width_divisor, stage.width),
            "init": stage.init, "targets": [n for n, _ in stage.targets], "method": stage.method,
            "alpha": stage.weight_of("soft"), "beta": stage.weight_of("hidden"),
            "params": network.count_params(student), "flops": network.count_flops(student),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "epochs": stage.epochs, "train_seconds": round(seconds, 1), "seed": cfg.seed,
            "image_size": cfg.image_size, "num_classes": self.num_classes, "data": meta["name"],
            "evaluate": stage.evaluate, "history": hist, "signature": self._trained_signature(stage),
        }
        if val_metrics:
            record["val_metrics"] = {k: float(v) for k, v in val_metrics.items()}
            record["val_images"] = n_val
        if fitted.resumed:
            record["resumed_at_epoch"] = fitted.resumed[0] + 1
        if cache is not None or stage.name.endswith(teacher_cache.SUFFIX):  # trained on, or from, cached targets
            record["teacher_cache"] = cfg.teacher_cache
        if self._teacher_identity(stage):
            record["teacher_source"] = self._teacher_identity(stage)
        if self.inputs.problems.get(data_dir):
            record["skipped_problems"] = len(self.inputs.problems[data_dir])
        if stage.task == "verify":
            record["softmax"] = stage.softmax
        if "landmarks" in task.heads:
            record["landmark_head"] = cfg.landmark_head
        if "resnet_blocks" in _arch_fields(stage, cfg):  # the depth to rebuild it with (evaluate, export)
            record["resnet_blocks"] = list(cfg.resnet_blocks)
        # Every worker saves (reading synchronized variables is a collective), each into its own root.
        self._save(stage, student, record, artifacts)
        shutil.rmtree(self.backup_dir(stage, self.root), ignore_errors=True)  # the chief's is the shared one
        loss = hist.get("loss") or [float("nan")]
        self.log(f"[stage] {label}: {stage.epochs} epochs in {seconds:.0f}s, loss "
                 f"{loss[0]:.3f} → {loss[-1]:.3f}; {_fmt(record['metrics'])}")
        return record

    def _teacher_cache(self, stage: Stage, data_dir: str, train_cfg: pipeline.InputConfig):
        """The teacher's precomputed outputs for this stage's training images, or None (online teacher)."""
        if self.external is not None and self.external.offline:
            return self.external.cache(data_dir) if stage.distilled_from else None
        keys = self._cacheable(stage.task)
        if not teacher_cache.uses_cache(stage, self.cfg.teacher_cache, keys):
            if self.cfg.teacher_cache != "off" and stage.targets:
                self.log(f"[teacher cache] {stage.task}/{stage.name}: targets {[n for n, _ in stage.targets]} need "
                         f"teacher outputs the cache does not serve {stage.task} ({', '.join(keys)} only): "
                         "online teacher")
            return None
        if self.external is not None:
            if not os.path.isfile(self.external.path):
                self.log(f"[teacher cache] {stage.task}/{stage.name}: the cache keys on a teacher model file, "
                         f"{self.external.path} is a folder: online teacher")
                return None
            weights = self.external.path
        else:
            teacher = self.stage(*stage.teacher)
            own = self.path(teacher, ".weights.h5", self.root)
            weights = own if os.path.exists(own) else self.path(teacher, ".weights.h5")
        return teacher_cache.get(self.cfg.teacher_cache, weights, data_dir, train_cfg,
                                 lambda: self.load(*stage.teacher), self._teacher_caches,
                                 write=self.worker == 0, log=self.log)

    def _cacheable(self, task: str) -> tuple:
        return TASKS[task].cacheable_outputs(self.cfg)

    def _prepare_backup(self, stage: Stage, signature: dict) -> str:
        """The stage's backup directory, emptied unless it holds a backup of this very stage's training.

        A backup made with other settings (learning rate, epochs, batch, data...) would resume a different
        training: it is discarded, and the log says so.
        """
        path = self.backup_dir(stage)
        signature = json.loads(json.dumps(signature))
        sig_path = os.path.join(path, "stage.json")
        reason = None
        if self.cfg.overwrite:
            reason = "--overwrite"
        elif os.path.exists(sig_path):
            with open(sig_path) as f:
                saved = json.load(f)
            if saved != signature:
                keys = sorted(k for k in set(saved) | set(signature) if saved.get(k) != signature.get(k))
                reason = f"made with other settings ({', '.join(keys)})"
        elif os.path.exists(path):
            reason = "incomplete"
        if reason and os.path.exists(path):
            self.log(f"[stage] {stage.task}/{stage.name}: discarding the backup in {path} ({reason})")
        if self.worker == 0:
            if reason:
                shutil.rmtree(path, ignore_errors=True)
            if not os.path.exists(sig_path):
                io.write_json(sig_path, signature)
        elif reason:
            shutil.rmtree(self.backup_dir(stage, self.root), ignore_errors=True)
        return path

    def _save(self, stage: Stage, model: keras.Model, record: dict, artifacts: dict) -> None:
        """Weights first, record last (each via temp file + rename): a record means the weights are whole."""
        with io.replacing(self.path(stage, ".weights.h5", self.root)) as tmp:  # its suffix picks the format
            model.save_weights(tmp)
        arrays = {k: artifacts[k] for k in ARTIFACT_ARRAYS if k in artifacts}
        if "roc" in artifacts:
            arrays.update(roc_fpr=artifacts["roc"][0], roc_tpr=artifacts["roc"][1])
        if arrays:
            io.write_npz(self.path(stage, ".eval.npz", self.root), **arrays)
        io.write_json(self.path(stage, ".json", self.root), record)

    def _artifacts(self, stage: Stage) -> dict:
        path = self.path(stage, ".eval.npz")
        if not os.path.exists(path):
            return {}
        z = np.load(path)
        out = {k: z[k] for k in ARTIFACT_ARRAYS if k in z}
        if "roc_fpr" in z:
            out["roc"] = (z["roc_fpr"], z["roc_tpr"])
        return out

    def run(self, task: str) -> dict:
        """Every stage of the task's experiment, then its results.json, results.md and plots."""
        lanes.train(self, task)  # on two cores, independent stages side by side; then all are in _records
        records = [self.ensure(task, name) for name in self.plan(task)]
        out_dir = os.path.join(self.cfg.model_dir, task)
        res = results.Results.load(os.path.join(out_dir, "results.json"))
        res.data.update(task=task, data=self.meta(task)["name"], preset=self.cfg.preset, seed=self.cfg.seed)
        for rec in records:
            if rec.get("evaluate", True):
                res.upsert({k: v for k, v in rec.items() if k not in ("history", "evaluate", "data", "signature")})
        if self.worker == 0:
            io.write_json(os.path.join(out_dir, CONFIG_FILE), dataclasses.asdict(self.cfg))
            res.save()
            results.write_markdown(res.data, os.path.join(out_dir, "results.md"))
            results.write_methods(self.cfg.model_dir)  # <model_dir>/methods.md, across tasks
            plots.plot_history({r["name"]: r["history"] for r in records},
                               os.path.join(out_dir, "training_curves.png"))
            stages = [s for s in self.plan(task).values() if s.evaluate]
            TASKS[task].plots({s.name: self._artifacts(s) for s in stages}, out_dir, res.models,
                              self.data_dir(task), self.cfg)
        return res.data


def synthetic_dir(cfg: Config, root: str) -> str:
    """Where a run under `root` keeps the synthetic faces of its settings."""
    from keras_kd.data.synthetic import folder_name
    return os.path.join(root, "data", folder_name(cfg.synthetic_identities, cfg.synthetic_images,
                                                  cfg.synthetic_size))


def _fmt(metrics: dict) -> str:
    keys = [k for k in ("top1", "pair_acc", "nrmse", "failure_rate", "rank1") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys) or "not evaluated"

