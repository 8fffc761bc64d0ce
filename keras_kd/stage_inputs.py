"""What a stage trains and validates on: its split sizes, its train and val datasets as `fit` reads them, and
the --skip_corrupt scan. Each data dir is counted, scanned and described in the log once per run."""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional

from keras_kd import distribute
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.data.example import DataError
from keras_kd.keras import tf


class StageInputs:
    def __init__(self, cfg: Config, strategy: tf.distribute.Strategy, log: Callable[[str], None]):
        self.cfg, self.strategy, self.log = cfg, strategy, log
        self.problems: Dict[str, List[str]] = {}  # --skip_corrupt: what scan found, per data dir
        self._readable_counts: Dict[str, Dict[str, int]] = {}
        self._announced_val: set = set()  # data dirs whose val split was described in the log

    def train_dataset(self, data_dir: str, train_cfg: pipeline.InputConfig, cache):
        """The train split, one pipeline per worker (its share of the records), with the teacher's cached
        outputs when `cache` is given."""
        return self.strategy.distribute_datasets_from_function(
            lambda ctx: pipeline.make_dataset(data_dir, "train", train_cfg, training=True, input_context=ctx,
                                              teacher_outputs=cache, log=self.log))

    def split_sizes(self, data_dir: str, meta: dict, train_cfg: pipeline.InputConfig, num_classes: Optional[int]):
        """(train records, val records, train identities, val identities) a stage trains and validates on;
        `meta`: the data dir's meta.json as the Runner read it."""
        n_train = self._readable(data_dir, num_classes) if self.cfg.skip_corrupt else int(meta["splits"]["train"])
        if not train_cfg.val_fraction:
            return n_train, 0, int(meta["num_classes"]), 0
        counts = pipeline.split_counts(data_dir, train_cfg)
        if not counts["train"]:
            raise DataError(f"{data_dir}: --val_fraction={train_cfg.val_fraction} leaves no train record "
                            f"(all {counts['val']} are held out for validation); lower it")
        if data_dir not in self._announced_val:
            self._announced_val.add(data_dir)
            rule = pipeline.val_rule(data_dir, train_cfg.val_fraction)
            capped = f", capped at {pipeline.MAX_VAL_IMAGES} images" if rule.fraction < train_cfg.val_fraction else ""
            self.log(f"[data] {data_dir}: val split = {counts['val']} of the {counts['train'] + counts['val']} train "
                     f"records ({counts['val_ids']} identities), held out by {rule.by} (fraction {rule.fraction:.3g}"
                     f"{capped}, the data's seed {rule.seed}); models are chosen on it, the test split only measures")
        return n_train - counts["val"], counts["val"], counts["train_ids"], counts["val_ids"]

    def val_dataset(self, data_dir: str, val_cfg: pipeline.InputConfig, cache, n_val: int):
        """(dataset, steps): the val split, evaluated by `fit` after every epoch with the same loss terms
        (teacher included) and the task's per-example metrics; no file names (strings stay off accelerators).

        `fit` needs a step count for a distributed dataset and keeps its iterator across epochs, so every input
        pipeline reads the whole val split (not a share: the mean over replicas is then the mean over the
        split) and repeats it, padded to a whole number of steps with batches of weight 0 (a network cannot
        run on an empty batch): every epoch's evaluation is exactly one pass over the same images, on every
        worker alike.
        """
        batch = max(1, val_cfg.batch_size // self.strategy.num_replicas_in_sync)  # per replica
        local = distribute.local_replicas(self.strategy)  # one pipeline's replicas: a batch each per step
        batches = -(-n_val // batch)
        steps = -(-batches // local)

        def make(_):
            ds = pipeline.make_dataset(data_dir, "val", dataclasses.replace(val_cfg, batch_size=batch),
                                       training=False, teacher_outputs=cache, log=self.log)
            ds = ds.map(lambda x, y: (x, {**{k: v for k, v in y.items() if k != "source"},
                                          "weight": tf.ones_like(y["label"], tf.float32)}))
            if steps * local > batches:
                void = ds.take(1).map(lambda x, y: (x, {**y, "weight": tf.zeros_like(y["weight"])}))
                ds = ds.concatenate(void.repeat(steps * local - batches))
            return ds.repeat()
        return self.strategy.distribute_datasets_from_function(make), steps

    def _readable(self, data_dir: str, num_classes: Optional[int]) -> int:
        """--skip_corrupt: reads every record once, reports what will be skipped, returns the good count."""
        if data_dir not in self.problems:
            problems, good = [], {}
            for split in ("train", "test"):
                found, good[split] = pipeline.scan(data_dir, split, num_classes)
                problems += found
            self.problems[data_dir] = problems
            self._readable_counts[data_dir] = good
            if problems:
                self.log(f"[data] {data_dir}: --skip_corrupt: skipping {len(problems)} bad record(s) or shard "
                         f"tail(s); {good['train']} train + {good['test']} test records readable")
                for line in problems[:10]:
                    self.log(f"[data]   {line}")
                if len(problems) > 10:
                    self.log(f"[data]   ... and {len(problems) - 10} more")
        good = self._readable_counts[data_dir]
        if not good["train"]:
            raise DataError(f"{data_dir}: no readable train record")
        return good["train"]
