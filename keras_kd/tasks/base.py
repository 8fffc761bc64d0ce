"""Task: what differs between classification, alignment and verification, and nothing else.

A task says which heads its models carry, its task loss, how its batches are drawn, which stages make up
its experiment (the paper's table for that task) and how a trained model is evaluated. Training,
saving, reuse and reporting are shared (stages.py).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np

from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.keras import keras, tf

StageRef = Tuple[str, str]  # (task, stage name)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One trained network of an experiment; saved under its name and reused by later stages/tasks."""

    task: str
    name: str
    width_divisor: int
    init: str                              # as reported: scratch | label | fitnet | classify | pretrain | distill
    epochs: int
    lr: float
    init_from: Optional[StageRef] = None   # weights to start from (any task)
    teacher: Optional[StageRef] = None
    targets: Tuple[Tuple[str, float], ...] = ()
    task_loss: bool = True
    softmax: bool = False                  # verification: joint triplet + softmax loss
    evaluate: bool = True                  # hint-only stages are not a model to report

    @property
    def role(self) -> str:
        return "teacher" if self.width_divisor == 1 and self.name.startswith("teacher") else "student"

    def weight_of(self, target: str) -> float:
        return dict(self.targets).get(target, 0.0)


class Task:
    name: str = ""
    heads: Tuple[str, ...] = ()
    headline: str = ""                     # the metric that ranks models (and export records report)
    lower_is_better = False
    uses_cls_data = False                  # trains on the classification data (cfg.cls_data)
    uses_labels = True                     # identity labels enter its losses (checked against num_classes)

    def batch_config(self, cfg: Config, training: bool) -> pipeline.InputConfig:
        return input_config(cfg, cfg.batch_size)

    def task_loss(self, stage: Stage, cfg: Config):
        raise NotImplementedError

    def plan(self, cfg: Config) -> list:
        raise NotImplementedError

    def evaluate(self, model: keras.Model, data_dir: str, cfg: Config) -> Tuple[Dict[str, float], dict]:
        """Returns (metrics, artifacts); artifacts feed the plots (CED, ROC)."""
        raise NotImplementedError

    def init_heads(self, model: keras.Model, copied: list, data_dir: str, cfg: Config) -> None:
        """Data-dependent initialization of task heads that were not carried over from another stage."""

    def plots(self, artifacts: Dict[str, dict], out_dir: str) -> list:
        return []

    def best_students(self, models: list) -> list:
        """Names of the best evaluated student of each width by the headline metric (what main.py ships)."""
        best = {}
        for m in models:
            value = m.get("metrics", {}).get(self.headline)
            if m.get("role") != "student" or value is None or value != value:  # NaN
                continue
            key = value if self.lower_is_better else -value
            d = m["width_divisor"]
            if d not in best or key < best[d][0]:
                best[d] = (key, m["name"])
        return [name for _, name in sorted(best.values(), key=lambda kv: kv[1])]


def input_config(cfg: Config, batch_size: int, **kw) -> pipeline.InputConfig:
    """The pipeline settings every task shares (input size, seed, corrupt-record policy)."""
    return pipeline.InputConfig(image_size=cfg.image_size, batch_size=batch_size, seed=cfg.seed,
                                skip_corrupt=cfg.skip_corrupt, **kw)


def predict(model: keras.Model, ds: tf.data.Dataset, keys) -> Tuple[dict, dict]:
    """Runs the model over a finite dataset; returns (outputs, targets) as numpy arrays keyed by name."""
    @tf.function
    def step(images):
        out = model(images, training=False)
        return {k: out[k] for k in keys}

    outs, tgts = {k: [] for k in keys}, {}
    for images, targets in ds:
        for k, v in step(images).items():
            outs[k].append(v.numpy())
        for k, v in targets.items():
            tgts.setdefault(k, []).append(v.numpy())
    cat = lambda d: {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in d.items()}  # noqa: E731
    return cat(outs), cat(tgts)
