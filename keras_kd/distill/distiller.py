"""Distiller: a Keras model that trains a student against a frozen teacher, run by `model.fit`.

    distiller = Distiller(student, teacher, task_loss=..., targets=[("soft", 1.0), ("hidden", 1.0)])
    distiller.compile(optimizer)
    distiller.fit(dataset)

The student and teacher stay plain functional models; the Distiller only adds losses (the components of
`distill/methods.py`, by name or as objects) and the small adapters some of them need when widths differ.
Intermediate features a loss reads (attention transfer's stage maps) come from a feature model over the
same layers (`models/archs.feature_model`), so the student itself is never rebuilt. With no teacher it is
plain supervised training, so every stage of a run — teacher, label-only student, distilled student — goes
through the same loss reduction and logging. Export the student alone: the Distiller is a training
device, not a deliverable.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

from keras_kd.config import Config
from keras_kd.distill import methods
from keras_kd.keras import keras, tf
from keras_kd.models import archs


class _Frozen:
    """The teacher and its feature view, held out of Keras' tracking: it is no part of the Distiller's
    checkpoints, so a stage backup holds only what training changes (sizes: docs/performance.md)."""

    def __init__(self, model: Optional[keras.Model], features: Optional[keras.Model]):
        self.model, self.features = model, features


class Distiller(keras.Model):
    def __init__(self, student: keras.Model, teacher: Optional[keras.Model] = None,
                 task_loss: Optional[Callable] = None,
                 targets: Sequence[Tuple[Union[str, methods.KDLoss], float]] = (),
                 temperature: float = 3.0, tau2: bool = False, config: Optional[Config] = None,
                 eval_metrics: Optional[Dict[str, Callable]] = None, **kwargs):
        """`targets`: (registry name or KDLoss, weight) pairs. Names are configured from `config` (a
        Config: every method's hyper-parameters), by default the defaults with this τ and τ² flag.
        `eval_metrics`: {name: f(y, student_outputs) → (per-example values, weights)}, task metrics tracked
        in evaluation only (`fit`'s validation: `val_<name>`), where the loss alone does not rank models."""
        super().__init__(**kwargs)
        if targets and teacher is None:
            raise ValueError("distillation targets need a teacher")
        if task_loss is None and not targets:
            raise ValueError("nothing to train: no task loss and no distillation target")
        self.student = student
        if teacher is not None:
            teacher.trainable = False
        self.task_loss = task_loss
        config = config if config is not None else Config(temperature=temperature, tau2=tau2)
        self.targets = [(methods.create(t, config) if isinstance(t, str) else t, float(w)) for t, w in targets]
        names = [t.name for t, _ in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"a distillation target is given twice: {names}")
        keys = sorted({k for t, _ in self.targets for k in t.keys})
        # The networks as feature extractors (themselves when their outputs suffice), built here once.
        self._student_features = archs.feature_model(student, keys)
        self._frozen = _Frozen(teacher, archs.feature_model(teacher, keys) if self.targets else None)
        self.adapters = {t.name: self._adapter(t) for t, _ in self.targets}
        self.trackers = {n: keras.metrics.Mean(name=n) for n in
                         ["loss"] + (["task"] if task_loss else []) + names}
        self.eval_metrics = dict(eval_metrics or {})
        self.eval_trackers = {n: keras.metrics.Mean(name=n) for n in self.eval_metrics}
        # Built from built networks, so it is built too: BackupAndRestore then restores the optimizer's
        # slots at once instead of deferring them to the first step.
        self.build(student.input_shape)

    def _adapter(self, target: methods.KDLoss):
        """A learned map from the student's feature width to the teacher's, or None when none is needed."""
        key = target.keys[0]
        s_shape = self._student_features.output[key].shape
        s_dim, t_dim = s_shape[-1], self._frozen.features.output[key].shape[-1]
        if s_dim == t_dim or target.adapter is None:
            if s_dim != t_dim and not target.any_width:
                raise ValueError(f"target {target.name!r}: student and teacher widths differ ({s_dim} vs {t_dim})")
            return None
        if target.adapter == "dense":
            layer = keras.layers.Dense(t_dim, name=f"adapter_{target.name}")
        else:
            layer = keras.layers.Conv2D(t_dim, 1, use_bias=False, name=f"adapter_{target.name}")
        # Built now, in the strategy scope: creating variables later, inside a replica's step, fails.
        layer.build(s_shape)
        return layer

    @property
    def teacher(self) -> Optional[keras.Model]:
        return self._frozen.model

    @property
    def metrics(self):
        # Keras resets these at the start of every epoch and of every evaluation.
        return list(self.trackers.values()) + list(self.eval_trackers.values())

    @property
    def trained_variables(self):
        adapters = [v for a in self.adapters.values() if a is not None for v in a.trainable_variables]
        return self.student.trainable_variables + adapters

    def call(self, images, training=False):
        return self.student(images, training=training)

    def _per_example(self, images, y, training: bool, s=None):
        """Per-example loss terms {name: [batch]} (weights applied); relational terms broadcast."""
        s = self._student_features(images, training=training) if s is None else s
        terms = {}
        if self.task_loss is not None:
            terms["task"] = self.task_loss(y, s)
        if self.targets:
            if isinstance(y, dict) and "teacher" in y:
                t = y["teacher"]  # precomputed teacher outputs (--teacher_cache): no teacher pass
            else:
                t = self._frozen.features(images, training=False)
            t = {k: tf.stop_gradient(v) for k, v in t.items()}
            labels = y.get("label") if isinstance(y, dict) else None
            for target, w in self.targets:
                feats = {k: s[k] for k in target.keys}
                adapter = self.adapters[target.name]
                if adapter is not None:
                    feats[target.keys[0]] = adapter(feats[target.keys[0]])
                terms[target.name] = w * target(feats, t, labels)
        return terms

    def _loss(self, images, y, training: bool, s=None):
        terms = self._per_example(images, y, training, s)
        total = tf.add_n(list(terms.values()))
        # Averaged over the global batch: summed over replicas by the optimizer, this is the true mean.
        loss = tf.nn.compute_average_loss(total)
        reg = self.student.losses
        if reg:
            loss += tf.nn.scale_regularization_loss(tf.add_n(reg))
        # Per example, not per batch: an evaluation's last batch is smaller, and is weighed by what it holds;
        # y["weight"] 0 marks the padding of a val split to whole steps (stages.py).
        weight = y.get("weight") if isinstance(y, dict) else None
        for name, value in terms.items():
            self.trackers[name].update_state(tf.broadcast_to(value, tf.shape(total)), sample_weight=weight)
        self.trackers["loss"].update_state(total, sample_weight=weight)
        return loss

    def train_step(self, data):
        images, y = data
        with tf.GradientTape() as tape:
            loss = self._loss(images, y, training=True)
        variables = self.trained_variables
        grads = tape.gradient(loss, variables)
        # Heads no loss reaches (the class head when α = 0) get no gradient: leave them out, silently.
        self.optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        return {name: m.result() for name, m in self.trackers.items()}

    def test_step(self, data):
        images, y = data
        s = self._student_features(images, training=False)
        self._loss(images, y, training=False, s=s)
        for name, metric in self.eval_metrics.items():
            value, weight = metric(y, s)
            if "weight" in y:
                weight = weight * y["weight"]
            self.eval_trackers[name].update_state(value, sample_weight=weight)
        return {name: m.result() for name, m in {**self.trackers, **self.eval_trackers}.items()}
