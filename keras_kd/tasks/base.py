"""Task: what differs between classification, alignment and verification, and nothing else.

A task says which heads its models carry, its task loss, how its batches are drawn, which stages make up
its experiment (the paper's table for that task), how a trained model is evaluated, how its
metrics are reported (units, table columns, its tables), and what its exported files output (the serving
outputs, their numpy check, --mode=predict's rows). Training, saving, reuse, reporting and export are shared
(stages.py, results.py, export/).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from keras_kd import results
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.distill import methods, teacher_cache
from keras_kd.keras import keras, tf
from keras_kd.models import archs

StageRef = Tuple[str, str]  # (task, stage name)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One trained network of an experiment; saved under its name and reused by later stages/tasks."""

    task: str
    name: str
    width_divisor: int
    # init, as reported: scratch | label | fitnet | select (the teacher's weights, selected) | selected (from a
    # select stage) | classify | pretrain | distill
    init: str
    epochs: int
    lr: float
    init_from: Optional[StageRef] = None   # weights to start from (any task)
    teacher: Optional[StageRef] = None
    targets: Tuple[Tuple[str, float], ...] = ()
    task_loss: bool = True
    softmax: bool = False                  # verification: joint triplet + softmax loss
    evaluate: bool = True                  # hint-only stages are not a model to report
    arch: str = archs.DEFAULT              # models/archs.py; width_divisor applies to ResNet only
    width: float = 1.0                     # width multiplier of the other architectures

    @property
    def role(self) -> str:
        return "teacher" if self.width_divisor == 1 and self.name.startswith("teacher") else "student"

    def weight_of(self, target: str) -> float:
        return dict(self.targets).get(target, 0.0)

    @property
    def needs(self) -> List[StageRef]:
        """The stages trained before this one: its init and its teacher (named even where no term reads it)."""
        return [tuple(d) for d in (self.init_from, self.teacher) if d is not None]

    @property
    def distilled_from(self) -> Optional[StageRef]:
        """The teacher this stage reads: a transfer stage with α = β = 0 names one but has no term using it."""
        return self.teacher if self.targets else None

    @property
    def method(self) -> str:
        """The distillation loss by name ('soft', 'dkd', 'soft_at2', 'none'): the methods table's row."""
        return methods.spec_name(self.targets)


class Task:
    name: str = ""
    heads: Tuple[str, ...] = ()
    headline: str = ""                     # the metric that ranks models (and export records report)
    lower_is_better = False                # of the headline
    # How results.py reports the task's metrics. Units by name token, which also names derived metrics
    # (val_top1, nrmse_left_eye, tflite_int8_nrmse): fractions 0..1 are shown as percent, percents as stored.
    fraction_metrics: Tuple[str, ...] = ("acc",)
    percent_metrics: Tuple[str, ...] = ()
    table_metrics: Tuple[str, ...] = ()    # the columns of the methods and seed tables, the headline first
    cache_metrics: Tuple[str, ...] = ()    # the columns of the teacher-cache table (online / cached)
    labels: Dict[str, str] = {}            # a human name with its unit for each of `table_metrics`
    uses_cls_data = False                  # trains on the classification data (cfg.cls_data)
    uses_labels = True                     # identity labels enter its losses (checked against num_classes)
    # What export/ ships: the network outputs it is made from and the named outputs of every signature.
    model_output_keys: Tuple[str, ...] = ()
    serving_output_names: Tuple[str, ...] = ()
    draws_landmarks = False                # --mode=predict draws each image with its predicted landmarks
    shape_flags: Tuple[str, ...] = ()      # flags that change the weights' shapes (named when loading fails)

    def batch_config(self, cfg: Config, training: bool) -> pipeline.InputConfig:
        return input_config(cfg, cfg.batch_size)

    def task_loss(self, stage: Stage, cfg: Config):
        raise NotImplementedError

    def plan(self, cfg: Config) -> list:
        raise NotImplementedError

    def settings(self, stage: Stage, cfg: Config) -> dict:
        """This task's flags that shape a stage (its loss, its heads), by name: part of the signature a
        saved stage is reused by (stages.py), so only what changes the trained network belongs here."""
        return {}

    def cacheable_outputs(self, cfg: Config) -> Tuple[str, ...]:
        """Teacher outputs that ``--teacher_cache`` may serve this task's students: computed once on the
        centre crop, they stand in for those of the shifted, flipped crop the student sees, so only outputs
        that such a crop changes little belong here (the logits and the pooled K)."""
        return teacher_cache.KEYS

    def labels_index_classes(self, cfg: Config) -> bool:
        """Whether this task's identity labels are the classes of the classification head every network
        keeps: true when it trains on the classification data. Losses that read labels (DKD) need it."""
        return self.uses_cls_data or cfg.cls_data in ("", cfg.data)

    def method_terms(self, cfg: Config) -> List[methods.Spec]:
        """The parsed terms of each --methods entry that applies to this task, duplicates dropped."""
        out: Dict[str, methods.Spec] = {}
        for spec in cfg.methods:
            terms = methods.parse_kd(spec)
            if self.skip_reason(terms, cfg) is None:
                out.setdefault(methods.spec_name(terms), terms)
        return list(out.values())

    def skipped(self, cfg: Config) -> List[Tuple[str, str]]:
        """(flag, why) of each part of the flags this task leaves out, such as a --methods entry (the run says so)."""
        reasons = [(spec, self.skip_reason(methods.parse_kd(spec), cfg)) for spec in cfg.methods]
        return [(f"--methods={spec}", why) for spec, why in reasons if why]

    def skip_reason(self, terms: methods.Spec, cfg: Config) -> Optional[str]:
        """Why a distillation loss cannot run on this task with these flags, or None when it can."""
        needs = [n for n, _ in terms if methods.REGISTRY[n].needs_labels]
        if needs and not self.labels_index_classes(cfg):
            return (f"{', '.join(needs)} needs identity labels of the classification head's classes, and "
                    f"{self.name} trains on other data than the classification stages")
        return None

    def metrics(self, outputs: Dict[str, np.ndarray], targets: Dict[str, np.ndarray]) -> Dict[str, float]:
        """The metrics that need only the model's outputs and the targets (numpy, as `predict` returns
        them), computed the same way for a Keras model and for an exported file."""
        raise NotImplementedError

    def tables(self, models: List[dict]) -> List[str]:
        """Markdown lines of this task's tables in the paper's shape for results.md (results.py's helpers
        render them); [] when there are none."""
        return []

    def evaluate(self, model: keras.Model, data_dir: str, cfg: Config,
                 split: str = "test") -> Tuple[Dict[str, float], dict]:
        """Returns (metrics, artifacts) on a split (test: what is reported; val: what models are chosen
        by); artifacts feed the plots (CED, ROC)."""
        raise NotImplementedError

    def eval_metrics(self, stage: Stage) -> Dict[str, Callable]:
        """{name: f(y, outputs) → (per-example values, weights)}: the headline metric batch by batch, tracked
        on the val split after every epoch (`val_<name>` curves); {} when it is not a per-example mean."""
        return {}

    def init_heads(self, model: keras.Model, copied: list, data_dir: str, cfg: Config) -> None:
        """Data-dependent initialization of task heads that were not carried over from another stage."""

    def plots(self, artifacts: Dict[str, dict], out_dir: str, models: Iterable[dict] = (),
              data_dir: str = "", cfg: Optional[Config] = None) -> list:
        """PNGs of the run (CED, ROC, examples); `models` are the evaluated records, for picking the best."""
        return []

    def best_students(self, models: list) -> list:
        """Names of the best evaluated student of each network (ResNet width or architecture) by the headline metric on the val split
        (what main.py ships); see `results.best_students`."""
        return results.best_students(models, self.headline, self.lower_is_better)[0]

    def chosen_by(self, models: list) -> str:
        """Which split chose `best_students`: 'val', or 'test' for records without val metrics."""
        return results.best_students(models, self.headline, self.lower_is_better)[1]

    def teacher_stage(self, stage: Stage) -> StageRef:
        """The task's teacher of a stage, whatever the stage itself was trained with: the frozen teacher
        QAT and pruning distill from (export/)."""
        return self.name, "teacher"

    # ---- serving (export/) ----------------------------------------------------------------------
    def serving_outputs(self, raw: Dict[str, tf.Tensor], size: int, offset: int,
                        to_input: Optional[tf.Tensor]) -> Dict[str, tf.Tensor]:
        """The signatures' outputs from the network's raw outputs, in TensorFlow ops only (the SavedModel
        graph). ``size``: the crop side S; ``offset``: the crop's corner in the R×R resized image;
        ``to_input`` [N or 1, 1, 2]: (x, y) factors from resized-image pixels to input pixels, None for
        the crop's pixels (serving_crop)."""
        raise NotImplementedError

    def expected_serving_outputs(self, raw: Dict[str, np.ndarray], image_size: int,
                                 input_hw: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """`serving_outputs` in numpy, written independently of the graph on purpose: it is the check of
        that graph. ``input_hw`` [N, 2] (height, width) of the input images; None: the crop's pixels."""
        raise NotImplementedError

    def serving_units(self, image_size: int, input_hw: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Divisors that bring each serving output back to the model's own units, so one tolerance fits
        every signature; outputs not named are in model units already."""
        return {}

    def to_model_units(self, outputs: Dict[str, np.ndarray], image_size: int) -> Dict[str, np.ndarray]:
        """The crop signature's outputs (serving_crop, the .tflite files) in the model's own units."""
        out = dict(outputs)
        for k, unit in self.serving_units(image_size).items():
            out[k] = out[k] / unit
        return out

    def model_unit_outputs(self, raw: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The network's raw outputs named as the signatures' and in model units: what an exported file's
        outputs are compared with, after `to_model_units`."""
        return {k: raw[k] for k in self.model_output_keys}

    def allowed_mismatches(self, raw: Dict[str, np.ndarray], tolerance: float) -> int:
        """How many rows of an integer serving output may differ from the numpy check (near-ties)."""
        return 0

    def prediction_row(self, outputs: Dict[str, np.ndarray], i: int) -> Dict[str, object]:
        """Image ``i``'s entry in --mode=predict's predictions.json, from the serving outputs."""
        raise NotImplementedError

    def csv_fields(self, row: Dict[str, object]) -> Dict[str, object]:
        """A `prediction_row` as flat predictions.csv columns."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Student:
    """One student network of the run: what its stage names say (`tag`) and the Stage fields that build it."""

    tag: str
    width_divisor: int
    arch: str = archs.DEFAULT
    width: float = 1.0

    @property
    def build(self) -> dict:
        """Stage(...) keywords beyond width_divisor: nothing for ResNet, so its stages compare as before."""
        return {} if self.arch == archs.DEFAULT else {"arch": self.arch, "width": self.width}


def students(cfg: Config) -> List[Student]:
    """The run's students: ResNet-50/d for each --students divisor when resnet50 is in --student_arch, then
    one student of each other --student_arch at --student_width (all distilled from the same teacher)."""
    out = []
    for arch in cfg.student_arch:
        if archs.get(arch).width_multiplier:
            out.append(Student(archs.student_tag(arch, width=cfg.student_width), 1, arch, float(cfg.student_width)))
        else:
            out += [Student(archs.student_tag(arch, d), int(d), arch) for d in cfg.students]
    return out


def input_config(cfg: Config, batch_size: int, **kw) -> pipeline.InputConfig:
    """The pipeline settings every task shares (input size, seed, corrupt-record policy, image cache: on
    disk under the run's model_dir, which is writable where a shared data directory may not be; the val
    split carved from train)."""
    return pipeline.InputConfig(image_size=cfg.image_size, batch_size=batch_size, seed=cfg.seed,
                                skip_corrupt=cfg.skip_corrupt, cache=cfg.cache, val_fraction=cfg.val_fraction,
                                cache_dir=os.path.join(cfg.model_dir, pipeline.CACHE_DIR), **kw)


def unique_stages(stages: Iterable[Stage]) -> List[Stage]:
    """The stages in order, each name once: a stage planned twice must be planned the same way."""
    seen: Dict[str, Stage] = {}
    for s in stages:
        if s.name in seen and seen[s.name] != s:
            raise ValueError(f"stage {s.task}/{s.name} is planned twice with different settings "
                             f"({seen[s.name].targets} vs {s.targets}): give the weights explicitly "
                             "(e.g. --methods=soft:2 when --alpha=2)")
        seen.setdefault(s.name, s)
    return list(seen.values())


def predict(model: keras.Model, ds: tf.data.Dataset, keys) -> Tuple[dict, dict]:
    """Runs the model over a finite dataset; returns (outputs, targets) as numpy arrays keyed by name."""
    def step(images):
        out = model(images, training=False)
        return {k: out[k] for k in keys}
    # One trace for every batch size (the last batch is smaller): a ResNet-50 trace costs seconds.
    step = tf.function(step, input_signature=[tf.TensorSpec([None, *ds.element_spec[0].shape[1:]],
                                                            ds.element_spec[0].dtype)])

    outs, tgts = {k: [] for k in keys}, {}
    for images, targets in ds:
        for k, v in step(images).items():
            outs[k].append(v.numpy())
        for k, v in targets.items():
            tgts.setdefault(k, []).append(v.numpy())
    cat = lambda d: {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in d.items()}  # noqa: E731
    return cat(outs), cat(tgts)
