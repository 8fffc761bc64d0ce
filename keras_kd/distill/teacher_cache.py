"""Teacher-output cache (``--teacher_cache=memory|disk``): the frozen teacher runs once per training image.

Online distillation pays a ResNet-50 forward pass in every student step. The teacher is frozen and in
inference mode, so its outputs depend only on the image: computed once for every training image and
streamed with the batch (``targets["teacher"]``), a distillation step costs about what a plain student
step costs (bench/RESULTS.md has the ratios).

What is cached, and the approximation it makes:

- ``logits`` and ``hidden`` (``KEYS``): what the soft, logits and hidden targets compare. The FitNet
  ``hint`` target needs stage-2 feature maps (H×W×C per image, too big to be worth it): a stage with such a
  target trains online, whatever the flag says, and the log says so (``uses_cache``). So does a target on
  an output its task does not let the cache serve (``Task.cacheable_outputs``): alignment's K is a map of
  the crop with the spatial and heatmap heads, which a random shift and flip move.
- One view per image: the **un-augmented** one, the evaluation-style centre crop without flip at the run's
  image_size. Training batches still use random crops and flips, so the student sees an augmented image
  against the teacher's outputs for the centred one: an approximation, not the online targets. On
  un-augmented input the cached and online targets are the same (``tests/test_teacher_cache.py``); how much
  the approximation costs in accuracy is measured, not assumed (README, "Performance").

Where it lives, and staleness:

- ``memory``: computed at the first stage that needs it and kept for the rest of the run (shared by all
  stages distilled from the same teacher), never written.
- ``disk``: ``<data_dir>/teacher_cache/<key>.npz``, next to the TFRecords, written atomically (temp file +
  rename); a later run (or stage) with the same key loads it instead of running the teacher.
- The key (``cache_key``) is a hash of the teacher weights file's *content*, the data (meta.json and the
  train shards' names and sizes), the pre-processing (image_size, resize size, crop/flip settings and the
  source code of the pipeline's decode and crop functions) and the cached outputs. A file whose stored key
  differs from the run's is never used: a cache made from the same teacher weights file with other
  settings, or from weights that have since changed, is reported as stale with the fields that differ,
  removed and rebuilt.

Records are matched by their ``image/source`` string (unique within a data set; checked): the pipeline
looks each record up in a hash table and gathers its row (``TeacherCache.__call__``), so shuffling,
interleaving, P×K batches and ``tf.distribute`` input sharding are all unaffected.

Stages trained on cached targets, or starting from such a stage, are named with the ``_tc`` suffix
(``cached_names``): they never overwrite or get reused as their online twins, and both can sit in one
model_dir, sharing the teacher and the label-only students; results.md then compares each pair
(``results.py``, "Teacher cache"), and each record says ``"teacher_cache": "memory"|"disk"``.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import inspect
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from keras_kd.data import pipeline
from keras_kd.data.example import META_FILE, DataError, shard_paths
from keras_kd.distill import methods
from keras_kd.io import sha256_file, write_npz
from keras_kd.keras import keras, tf

MODES = ("off", "memory", "disk")
KEYS = ("logits", "hidden")        # teacher outputs the cache holds
SUFFIX = "_tc"                     # stage names of students trained on cached targets
CACHE_DIR = "teacher_cache"
FORMAT = 1                         # bump when what is stored changes
BUILD_BATCH = 64


class TeacherCacheError(DataError):
    """A cache cannot serve this run (records without unique sources, a record missing from it)."""


# ---- which stages use it ---------------------------------------------------------------------------
def cacheable(targets: Sequence, keys: Sequence[str]) -> bool:
    """True when every target of (name, weight) pairs compares only outputs in ``keys``: those the cache
    holds and the task lets it serve (``Task.cacheable_outputs``)."""
    return all(set(methods.REGISTRY[methods.ALIASES.get(name, name)].keys) <= set(keys) for name, _ in targets)


def uses_cache(stage, mode: str, keys: Sequence[str]) -> bool:
    """Whether a stage trains on cached teacher outputs under ``--teacher_cache=mode``."""
    return mode != "off" and stage.distilled_from is not None and cacheable(stage.targets, keys)


def cached_names(stages: list, mode: str, lookup: Callable[[tuple], Optional[object]],
                 keys_of: Callable[[str], Sequence[str]]) -> list:
    """The plan with cached stages renamed NAME_tc, and references to them (init_from) renamed too.

    A stage is cached when it trains on cached targets, or starts from a cached stage (alignment's Distill
    students start from the cached classification student of the same run, even with α = β = 0): a name
    always says whether the cache is anywhere in a network's history. ``lookup((task, name))`` returns the
    (un-renamed) stage a reference points to, in any task's plan; ``keys_of(task)`` the outputs the cache
    may serve that task's stages.
    """
    if mode == "off":
        return stages

    def cached(stage, depth=0) -> bool:
        if stage is None or depth > 20:
            return False
        return (uses_cache(stage, mode, keys_of(stage.task))
                or (stage.init_from is not None and cached(lookup(stage.init_from), depth + 1)))

    def ref(r):
        return (r[0], r[1] + SUFFIX) if r is not None and cached(lookup(r)) else r

    return [dataclasses.replace(s, name=s.name + SUFFIX if cached(s) else s.name,
                                init_from=ref(s.init_from), teacher=ref(s.teacher)) for s in stages]


# ---- the key -------------------------------------------------------------------------------------------
def cache_key(teacher_weights: str, data_dir: str, in_cfg: pipeline.InputConfig, split: str = "train") -> dict:
    """Everything the cached outputs depend on. ``key_hash`` of it names the file."""
    code = inspect.getsource(pipeline._decode) + inspect.getsource(pipeline._crop_flip)
    return {
        "format": FORMAT, "outputs": list(KEYS),
        "teacher_weights": os.path.abspath(teacher_weights),       # not hashed: says which file went stale
        "teacher_weights_sha256": sha256_file(teacher_weights),
        "data_meta_sha256": sha256_file(os.path.join(data_dir, META_FILE)),
        "split": split,
        "shards": [[os.path.basename(p), int(tf.io.gfile.stat(p).length)] for p in shard_paths(data_dir, split)],
        "image_size": in_cfg.image_size, "resize_size": in_cfg.resize_size, "crop": "centre", "flip": False,
        "skip_corrupt": in_cfg.skip_corrupt,
        "preprocess_sha256": hashlib.sha256(code.encode()).hexdigest(),
    }


def key_hash(key: dict) -> str:
    hashed = {k: v for k, v in key.items() if k != "teacher_weights"}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:20]


# ---- the cache -----------------------------------------------------------------------------------------
class TeacherCache:
    """Teacher outputs of every training record, by source; called in tf.data: source → {key: row}."""

    def __init__(self, sources: np.ndarray, outputs: Dict[str, np.ndarray], key: dict,
                 path: Optional[str] = None):
        self.sources = np.asarray(sources, dtype=object)
        self.outputs = {k: np.asarray(v, np.float32) for k, v in outputs.items()}
        self.key, self.path = key, path
        self._tensors = None

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.outputs.values()))

    def _lookup_tensors(self):
        if self._tensors is None:
            with tf.init_scope():  # created once, eagerly, whatever function builds the dataset
                keys = tf.constant([s if isinstance(s, bytes) else str(s).encode() for s in self.sources],
                                   tf.string)
                table = tf.lookup.StaticHashTable(
                    tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(self.sources), dtype=tf.int64)), -1)
                self._tensors = (table, {k: tf.constant(v) for k, v in self.outputs.items()})
        return self._tensors

    def __call__(self, source):
        """The cached outputs of the record named ``source`` (a scalar string tensor)."""
        table, arrays = self._lookup_tensors()
        row = table.lookup(source)
        check = tf.debugging.assert_non_negative(
            row, message="teacher cache: a training record is not in the cache (data changed?); rebuild it")
        with tf.control_dependencies([check]):
            return {k: tf.gather(v, row) for k, v in arrays.items()}


def compute(teacher: keras.Model, data_dir: str, in_cfg: pipeline.InputConfig, key: dict,
            split: str = "train", batch_size: int = BUILD_BATCH) -> TeacherCache:
    """Runs the teacher (inference mode) over every ``split`` record's un-augmented view, once: all of the
    train shards, the val records carved from them included (the val loss compares with the teacher too)."""
    cfg = dataclasses.replace(in_cfg, batch_size=batch_size, augment=False, flip=False, pk=None, cache="off",
                              val_fraction=0.0)
    ds = pipeline.make_dataset(data_dir, split, cfg, training=False)

    @tf.function(reduce_retracing=True)
    def forward(images):
        out = teacher(images, training=False)
        return {k: out[k] for k in KEYS}

    sources, outs = [], {k: [] for k in KEYS}
    for images, targets in ds:
        for k, v in forward(images).items():
            outs[k].append(v.numpy())
        sources += list(targets["source"].numpy())
    if not sources:
        raise TeacherCacheError(f"{data_dir}: no {split} record to cache teacher outputs for")
    seen = set()
    for s in sources:
        if s in seen:
            raise TeacherCacheError(f"{data_dir}: image/source {s.decode()!r} names two {split} records; the "
                                    "teacher cache matches records by it (reconvert, or --teacher_cache=off)")
        seen.add(s)
    return TeacherCache(np.array(sources, dtype=object), {k: np.concatenate(v) for k, v in outs.items()}, key)


def save(cache: TeacherCache, path: str) -> None:
    """Writes the cache as .npz (sources, outputs, key), atomically."""
    write_npz(path, sources=np.array([s.decode() if isinstance(s, bytes) else s for s in cache.sources]),
              key=np.array(json.dumps(cache.key, sort_keys=True)),
              **{f"out_{k}": v for k, v in cache.outputs.items()})
    cache.path = path


def load(path: str) -> TeacherCache:
    with np.load(path, allow_pickle=False) as z:
        key = json.loads(str(z["key"]))
        outputs = {f[len("out_"):]: z[f] for f in z.files if f.startswith("out_")}
        sources = np.array([s.encode() for s in z["sources"].tolist()], dtype=object)
    if set(outputs) != set(KEYS) or any(len(v) != len(sources) for v in outputs.values()):
        raise ValueError("outputs missing or of the wrong length")
    return TeacherCache(sources, outputs, key, path)


def _stored_key(path: str) -> Optional[dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["key"]))
    except Exception:  # unreadable: treated like a stale file of unknown origin
        return None


def get(mode: str, teacher_weights: str, data_dir: str, in_cfg: pipeline.InputConfig,
        load_teacher: Callable[[], keras.Model], memo: Optional[dict] = None, write: bool = True,
        log: Callable[[str], None] = print) -> TeacherCache:
    """The cache for this teacher, data and pre-processing: from ``memo``, the disk, or computed.

    ``write`` (the chief of a multi-worker run) writes and removes files; other workers only read them.
    """
    if mode not in ("memory", "disk"):
        raise ValueError(f"teacher cache mode must be memory or disk, got {mode!r}")
    key = cache_key(teacher_weights, data_dir, in_cfg)
    h = key_hash(key)
    memo = {} if memo is None else memo
    if h in memo:
        return memo[h]
    folder = os.path.join(data_dir, CACHE_DIR)
    path = os.path.join(folder, f"{h}.npz")
    if mode == "disk":
        cache = _load_if_valid(path, key, log)
        if cache is not None:
            memo[h] = cache
            return cache
        _report_stale(folder, path, key, write, log)
    t0 = time.time()
    cache = compute(load_teacher(), data_dir, in_cfg, key)
    log(f"[teacher cache] computed the teacher's {', '.join(KEYS)} for {len(cache)} training images "
        f"({cache.nbytes / 2**20:.1f} MiB) in {time.time() - t0:.1f}s"
        + ("" if mode == "disk" and write else " (kept in memory)"))
    if mode == "disk" and write:
        save(cache, path)
        log(f"[teacher cache] wrote {path}")
    memo[h] = cache
    return cache


def _load_if_valid(path: str, key: dict, log) -> Optional[TeacherCache]:
    if not os.path.exists(path):
        return None
    try:
        cache = load(path)
    except Exception as e:  # truncated or damaged: rebuilt, never trusted
        log(f"[teacher cache] {path}: unreadable ({type(e).__name__}); rebuilding it")
        return None
    if cache.key != json.loads(json.dumps(key, sort_keys=True)):
        log(f"[teacher cache] {path}: stale (differs in {', '.join(_diff(cache.key, key))}); rebuilding it")
        return None
    log(f"[teacher cache] using {path} ({len(cache)} images)")
    return cache


def _diff(old: Optional[dict], new: dict) -> List[str]:
    if old is None:
        return ["unreadable"]
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["nothing"]


def _report_stale(folder: str, path: str, key: dict, write: bool, log) -> None:
    """Caches made from the same teacher weights file with another key are stale: say why, remove them."""
    for other in sorted(glob.glob(os.path.join(folder, "*.npz"))):
        if os.path.abspath(other) == os.path.abspath(path):
            continue
        old = _stored_key(other)
        if old is not None and old.get("teacher_weights") != key["teacher_weights"]:
            continue  # another teacher's cache: not ours to judge
        log(f"[teacher cache] {other} is stale (differs in {', '.join(_diff(old, key))}): not used"
            + ("; removed" if write else ""))
        if write:
            try:
                os.unlink(other)
            except OSError:
                pass
