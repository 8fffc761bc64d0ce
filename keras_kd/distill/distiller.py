"""Distiller: a Keras model that trains a student against a frozen teacher, run by `model.fit`.

    distiller = Distiller(student, teacher, task_loss=..., targets=[("soft", 1.0), ("hidden", 1.0)])
    distiller.compile(optimizer)
    distiller.fit(dataset)

The student and teacher stay plain functional models; the Distiller only adds losses (and the small
adapters some targets need when widths differ). With no teacher it is plain supervised training, so every
stage of a run — teacher, label-only student, distilled student — goes through the same loss reduction
and logging. Export the student alone: the Distiller is a training device, not a deliverable.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

from keras_kd.distill import losses
from keras_kd.keras import keras, tf


class Distiller(keras.Model):
    def __init__(self, student: keras.Model, teacher: Optional[keras.Model] = None,
                 task_loss: Optional[Callable] = None, targets: Sequence[Tuple[str, float]] = (),
                 temperature: float = 3.0, tau2: bool = False, **kwargs):
        super().__init__(**kwargs)
        if targets and teacher is None:
            raise ValueError("distillation targets need a teacher")
        if task_loss is None and not targets:
            raise ValueError("nothing to train: no task loss and no distillation target")
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.task_loss = task_loss
        self.temperature = temperature
        self.tau2 = tau2
        self.targets = [(losses.TARGETS[name], float(w)) for name, w in targets]
        self.adapters = {t.name: self._adapter(t) for t, _ in self.targets}
        self.trackers = {n: keras.metrics.Mean(name=n) for n in
                         ["loss"] + (["task"] if task_loss else []) + [t.name for t, _ in self.targets]}
        # Built from built networks, so it is built too: BackupAndRestore then restores the optimizer's
        # slots at once instead of deferring them to the first step.
        self.build(student.input_shape)

    def _adapter(self, target: losses.Target):
        """A learned map from the student's feature width to the teacher's, or None when they match."""
        s_dim = self.student.output[target.key].shape[-1]
        t_dim = self.teacher.output[target.key].shape[-1]
        if s_dim == t_dim or target.adapter is None:
            if s_dim != t_dim:
                raise ValueError(f"target {target.name!r}: student and teacher widths differ ({s_dim} vs {t_dim})")
            return None
        if target.adapter == "dense":
            layer = keras.layers.Dense(t_dim, name=f"adapter_{target.name}")
        else:
            layer = keras.layers.Conv2D(t_dim, 1, use_bias=False, name=f"adapter_{target.name}")
        # Built now, in the strategy scope: creating variables later, inside a replica's step, fails.
        layer.build(self.student.output[target.key].shape)
        return layer

    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def trained_variables(self):
        adapters = [v for a in self.adapters.values() if a is not None for v in a.trainable_variables]
        return self.student.trainable_variables + adapters

    def call(self, images, training=False):
        return self.student(images, training=training)

    def _per_example(self, images, y, training: bool):
        """Per-example loss terms {name: [batch]} (weights applied)."""
        s = self.student(images, training=training)
        terms = {}
        if self.task_loss is not None:
            terms["task"] = self.task_loss(y, s)
        if self.targets:
            # Precomputed teacher outputs (--teacher_cache) come with the batch: no teacher pass then.
            t = y["teacher"] if isinstance(y, dict) and "teacher" in y else self.teacher(images, training=False)
            for target, w in self.targets:
                feat = s[target.key]
                adapter = self.adapters[target.name]
                if adapter is not None:
                    feat = adapter(feat)
                kw = dict(temperature=self.temperature, tau2=self.tau2) if target.uses_temperature else {}
                terms[target.name] = w * target.fn(feat, t[target.key], **kw)
        return terms

    def _loss(self, images, y, training: bool):
        terms = self._per_example(images, y, training)
        total = tf.add_n(list(terms.values()))
        # Averaged over the global batch: summed over replicas by the optimizer, this is the true mean.
        loss = tf.nn.compute_average_loss(total)
        reg = self.student.losses
        if reg:
            loss += tf.nn.scale_regularization_loss(tf.add_n(reg))
        for name, value in terms.items():
            self.trackers[name].update_state(tf.reduce_mean(value))
        self.trackers["loss"].update_state(tf.reduce_mean(total))
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
        self._loss(images, y, training=False)
        return {name: m.result() for name, m in self.trackers.items()}
