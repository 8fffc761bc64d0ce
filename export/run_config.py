"""A finished run's Config, as export and the benchmarks read it back: from the config.json the run saved
(keras_kd.stages.CONFIG_FILE), or, for a run written before that file existed, rebuilt from its stage records."""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import typing

from keras_kd.config import Config
from keras_kd.stages import CONFIG_FILE

from export.saved_model import ExportError

_RUN_ONLY = ("model_dir", "task", "strategy", "parallel_stages", "overwrite")  # how and where that run ran, not what it trained


def config_from_run(model_dir: str, task: str, data: str = "", cls_data: str = "", **overrides) -> Config:
    """The Config of the run that trained ``<model_dir>/<task>``, from the config.json it saved.

    ``data``/``cls_data`` (when given) and ``overrides`` (other Config fields: the flags given to
    ``python -m export``) win over the saved values. Keys this Config does not know (a file of an older or
    newer version) are ignored; fields the file lacks keep their defaults. A run without config.json
    (written before it existed) gets the Config rebuilt from its stage records (``config_from_stages``).
    """
    path = os.path.join(model_dir, task, CONFIG_FILE)
    if not os.path.exists(path):
        return config_from_stages(model_dir, task, data, cls_data, **overrides)
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: unreadable run config ({e})") from None
    if not isinstance(saved, dict):
        raise ExportError(f"{path}: not a run config (a JSON object of Config fields)")
    hints = typing.get_type_hints(Config)
    kw = {f.name: _as_field(hints[f.name], saved[f.name]) for f in dataclasses.fields(Config)
          if f.name in saved and f.name not in _RUN_ONLY}
    kw.update({k: v for k, v in (("data", data), ("cls_data", cls_data)) if v}, **overrides)
    try:
        return Config(**{**kw, "model_dir": model_dir, "task": task})
    except TypeError as e:
        raise ExportError(f"{path}: {e}") from None


def _as_field(hint, value):
    """A JSON value as the Config field's type has it: lists back to (nested) tuples."""
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return tuple(_as_field(h, v) for h, v in zip(inner, value)) if len(inner) == len(value) else tuple(value)
    return value


def config_from_stages(model_dir: str, task: str, data: str = "", cls_data: str = "", **overrides) -> Config:
    """The Config a run without config.json had, as far as export needs it, from what its stages saved.

    Each ``<model_dir>/<task>/stages/<name>.json`` holds image_size, num_classes and width_divisor. The data
    directory is ``data`` when given, else the one ``<model_dir>/data/synthetic-*`` whose class count
    matches (synthetic runs write their data there). ``overrides`` set other Config fields (batch sizes,
    embedding_dim, seed, ...).
    """
    stages_dir = os.path.join(model_dir, task, "stages")
    recs = []
    for path in sorted(glob.glob(os.path.join(stages_dir, "*.json"))):
        try:
            with open(path) as f:
                recs.append(json.load(f))
        except (OSError, json.JSONDecodeError):
            continue
    if not recs:
        raise ExportError(f"{stages_dir}: no trained stage (run python main.py --task={task} first)")
    sizes = {r.get("image_size") for r in recs}
    classes = {r.get("num_classes") for r in recs}
    if len(sizes) != 1 or len(classes) != 1:
        raise ExportError(f"{stages_dir}: stages saved with different image sizes {sorted(map(str, sizes))} "
                          f"or class counts {sorted(map(str, classes))}; export them from separate model_dirs")
    image_size, num_classes = int(sizes.pop()), int(classes.pop())
    heads = {r["landmark_head"] for r in recs if r.get("landmark_head")}
    if len(heads) == 1 and "landmark_head" not in overrides:
        overrides["landmark_head"] = heads.pop()
    blocks = {tuple(r["resnet_blocks"]) for r in recs if r.get("resnet_blocks")}
    if len(blocks) == 1 and "resnet_blocks" not in overrides:
        overrides["resnet_blocks"] = blocks.pop()
    if not data:
        found = []
        for meta_path in sorted(glob.glob(os.path.join(model_dir, "data", "synthetic-*", "meta.json"))):
            with open(meta_path) as f:
                if json.load(f).get("num_classes") == num_classes:
                    found.append(os.path.dirname(meta_path))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)} ({', '.join(found)})"
            raise ExportError(f"{model_dir}/data: {what} synthetic data set with {num_classes} classes; "
                              "pass --data (and --cls_data) of the run")
        data = found[0]
    if "ids_per_batch" not in overrides:
        # Verification's P×K batches need P distinct identities: at most half of them, so that such batches
        # come often (the run's own value is not in the records).
        overrides["ids_per_batch"] = max(2, min(Config.ids_per_batch, num_classes // 2))
    return Config(task=task, model_dir=model_dir, data=data, cls_data=cls_data, image_size=image_size,
                  **overrides)
