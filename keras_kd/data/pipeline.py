"""tf.data input: TFRecord shards → parse → decode → augment → batch → prefetch.

Splits: `train` and `test` are the converter's shards; with `InputConfig.val_fraction` > 0, `val` is carved
from the train shards and `train` is what is left (`is_val`): models are chosen on `val`, and `test` is
only measured.

Batches are `(images, targets)`: images float32 [B, S, S, 3] in [0, 1] (the models start with batch
normalization, as the paper, so no mean subtraction here); targets a dict with "label" int32 [B],
"landmarks" float32 [B, 5, 2] in crop-normalized (x, y) ∈ [0, 1], and "has_landmarks" bool [B]; evaluation batches also carry "source" (file names).

Landmark coordinates are continuous: pixel i spans [i, i + 1), so resizing scales them and a horizontal
flip maps x → W − x (then left/right points swap).
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import inspect
import json
import os
from typing import Callable, List, Optional, Tuple

from keras_kd.data.example import (FEATURES, META_FILE, NUM_LANDMARKS, DataError, parse_example, read_meta,
                                   shard_paths)
from keras_kd.keras import tf

# Mirroring an image swaps left and right: eyes (0, 1) and mouth corners (3, 4); the nose (2) stays.
FLIP_PERMUTATION = (1, 0, 2, 4, 3)
# Precomputed teacher outputs (targets["teacher"]) may hold each output's view of the flipped centre crop
# too, under this suffix ("logits_flip"): a flipped training image is paired with it (`teacher_view`).
FLIP_VIEW = "_flip"
# The paper resizes to 256 and crops 224; other input sizes keep that proportion.
CROP_RATIO = 224 / 256
AUTOTUNE = tf.data.AUTOTUNE
CACHE_MODES = ("auto", "memory", "disk", "off")
CACHE_DIR = "data_cache"
# The validation split is evaluated after every epoch of every stage: a few hundred images keep that cheap
# and still rank models (an NRMSE or top-1 over 500 images has a standard error of a point or two).
MAX_VAL_IMAGES = 500
_announced: set = set()  # (data_dir, split, choice) already logged by this process


@dataclasses.dataclass(frozen=True)
class InputConfig:
    image_size: int
    batch_size: int                       # global batch; divided among replicas by input_context
    augment: bool = True                  # random crop + flip (training only)
    flip: bool = True
    cache: str = "auto"                   # decoded, resized images kept: auto | memory | disk | off (choose_cache)
    cache_dir: str = ""                   # --cache=disk: where the cache files go ("" = <data_dir>/data_cache)
    cache_budget: int = 0                 # --cache=auto: bytes it may hold in memory (0 = a quarter of RAM)
    shuffle_buffer: int = 4096
    seed: int = 0
    pk: Optional[Tuple[int, int]] = None  # (P identities, K images each) per batch, for triplet mining
    skip_corrupt: bool = False            # drop unreadable records instead of stopping (see `scan`)
    val_fraction: float = 0.0             # of the train shards held out as the val split (0: none; `is_val`)

    @property
    def resize_size(self) -> int:
        return int(round(self.image_size / CROP_RATIO))


def flip_landmarks(points, width):
    """Mirror (x, y) points of an image of `width` and swap left/right; points [..., 5, 2]."""
    x, y = points[..., 0], points[..., 1]
    mirrored = tf.stack([tf.cast(width, points.dtype) - x, y], axis=-1)
    return tf.gather(mirrored, FLIP_PERMUTATION, axis=-2)


def _decode(rec, resize: int):
    """Decode and resize the whole image to resize×resize; landmarks follow in pixel units."""
    image = tf.io.decode_image(rec["image"], channels=3, expand_animations=False)
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    image = tf.image.resize(image, [resize, resize], antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    scale = tf.stack([resize / w, resize / h])
    return {"image": image, "label": tf.cast(rec["label"], tf.int32),
            "landmarks": rec["landmarks"] * scale, "has_landmarks": rec["has_landmarks"],
            "source": rec["source"]}


def teacher_view(teacher: dict, flipped=None) -> dict:
    """The precomputed teacher outputs of the image the student sees: each output's flipped view where the
    image was flipped (a scalar bool tensor) and the outputs have one; the un-flipped view otherwise."""
    out = {k: v for k, v in teacher.items() if not k.endswith(FLIP_VIEW)}
    if flipped is None:
        return out
    return {k: tf.where(flipped, teacher[k + FLIP_VIEW], v) if k + FLIP_VIEW in teacher else v
            for k, v in out.items()}


def _crop_flip(ex, cfg: InputConfig, training: bool):
    size, resize = cfg.image_size, cfg.resize_size
    image, points = ex["image"], ex["landmarks"]
    if training and cfg.augment:
        off = tf.random.uniform([2], 0, resize - size + 1, dtype=tf.int32)
    else:
        off = tf.fill([2], (resize - size) // 2)
    image = tf.image.crop_to_bounding_box(image, off[0], off[1], size, size)
    points = points - tf.cast(tf.stack([off[1], off[0]]), tf.float32)
    do_flip = None
    if training and cfg.augment and cfg.flip:
        do_flip = tf.random.uniform([]) < 0.5
        image = tf.cond(do_flip, lambda: tf.image.flip_left_right(image), lambda: image)
        points = tf.cond(do_flip, lambda: flip_landmarks(points, size), lambda: points)
    image = tf.cast(image, tf.float32) / 255.0
    image.set_shape([size, size, 3])
    points = tf.reshape(points / size, [NUM_LANDMARKS, 2])
    targets = {"label": ex["label"], "landmarks": points, "has_landmarks": ex["has_landmarks"]}
    if "teacher" in ex:
        targets["teacher"] = teacher_view(ex["teacher"], do_flip)  # cached outputs (distill/teacher_cache.py)
    if not training:
        targets["source"] = ex["source"]  # evaluation matches pairs.txt by file name
    return image, targets


def _records(data_dir: str, split: str, cfg: InputConfig, training: bool, input_context):
    files = shard_paths(data_dir, split)
    if not files:
        raise DataError(f"{data_dir}: no {split}-*.tfrecord files")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) >= input_context.num_input_pipelines:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        else:
            return _interleave(ds, training, cfg).shard(input_context.num_input_pipelines,
                                                        input_context.input_pipeline_id)
    return _interleave(ds, training, cfg)


def _interleave(files, training: bool, cfg: InputConfig):
    if training:
        files = files.shuffle(1024, seed=cfg.seed)
    # A CRC error ends its shard's reader: with skip_corrupt the rest of that shard is lost, not the run.
    read = (lambda f: tf.data.TFRecordDataset(f).ignore_errors()) if cfg.skip_corrupt else tf.data.TFRecordDataset
    return files.interleave(read, cycle_length=4, num_parallel_calls=AUTOTUNE, deterministic=not training)


@dataclasses.dataclass(frozen=True)
class ValRule:
    """Which train records form the val split: a hash of each record's key (its source, or its identity when
    the converter split the data by identity, so no person is in both) and the data's split seed, below
    `fraction`. It depends on the record alone, so data converted by any keras-kd version can be carved, a
    run's --seed does not move it (seeds and shared teachers see one val split), and adding files does not
    move other records."""

    fraction: float                       # effective: --val_fraction, capped at MAX_VAL_IMAGES of the train split
    by: str                               # image | identity
    seed: int
    class_names: Tuple[str, ...] = ()


def val_rule(data_dir: str, val_fraction: float) -> ValRule:
    meta = read_meta(data_dir)
    n = int(meta.get("splits", {}).get("train", 0))
    fraction = min(val_fraction, MAX_VAL_IMAGES / n) if n else 0.0
    by = "identity" if meta.get("split_by") == "identity" else "image"
    return ValRule(fraction, by, int(meta.get("seed", 0)), tuple(str(c) for c in meta.get("class_names", ())))


_HASH_BUCKETS = 2**62


def is_val(rec: dict, rule: ValRule):
    """True (a bool tensor) when a parsed record belongs to the val split under `rule`."""
    if rule.by == "identity" and rule.class_names:  # the identity's name: adding people moves no one else
        names = tf.constant(list(rule.class_names))
        key = tf.gather(names, tf.clip_by_value(tf.cast(rec["label"], tf.int32), 0, len(rule.class_names) - 1))
    elif rule.by == "identity":
        key = tf.strings.as_string(rec["label"])
    else:
        key = rec["source"]
    bucket = tf.strings.to_hash_bucket_fast(tf.strings.join([f"{rule.seed}:val:", key]), _HASH_BUCKETS)
    return tf.cast(bucket, tf.float64) < rule.fraction * _HASH_BUCKETS


_counts: dict = {}  # split_counts, by data, shards and rule


def split_counts(data_dir: str, cfg: InputConfig) -> dict:
    """Records and identities of the train and val splits under `cfg.val_fraction` (one read of the train
    shards' sources and labels, no image decoded; remembered for the process)."""
    rule = val_rule(data_dir, cfg.val_fraction)
    shards = shard_paths(data_dir, "train")
    if not shards:
        raise DataError(f"{data_dir}: no train-*.tfrecord files")
    key = (os.path.abspath(data_dir), tuple((p, os.path.getsize(p)) for p in shards), rule, cfg.skip_corrupt)
    if key not in _counts:
        spec = {k: v for k, v in FEATURES.items() if k in ("image/source", "image/label")}
        read = (lambda f: tf.data.TFRecordDataset(f).ignore_errors()) if cfg.skip_corrupt else tf.data.TFRecordDataset
        ds = tf.data.Dataset.from_tensor_slices(shards).interleave(read, cycle_length=4)
        ds = ds.map(lambda r: tf.io.parse_single_example(r, spec))
        if cfg.skip_corrupt:
            ds = ds.ignore_errors()
        ds = ds.map(lambda r: (is_val({"source": r["image/source"], "label": r["image/label"]}, rule),
                               r["image/label"]))
        ids = {"train": set(), "val": set()}
        n = {"train": 0, "val": 0}
        for val, label in ds.batch(4096).as_numpy_iterator():
            for split, mask in (("val", val), ("train", ~val)):
                n[split] += int(mask.sum())
                ids[split].update(label[mask].tolist())
        _counts[key] = {**n, "train_ids": len(ids["train"]), "val_ids": len(ids["val"])}
    return dict(_counts[key])


def make_dataset(data_dir: str, split: str, cfg: InputConfig, training: bool,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 repeat: Optional[bool] = None, teacher_outputs=None,
                 log: Callable[[str], None] = print) -> tf.data.Dataset:
    """The one input function: serves `fit`, evaluation and `distribute_datasets_from_function`.

    Decoded images are cached as `cfg.cache` says (`choose_cache`); `log` hears the choice once per split.

    `teacher_outputs` (a `distill.teacher_cache.TeacherCache`: source → {name: tensor}) adds the teacher's
    precomputed outputs of each record to its targets, as targets["teacher"].
    """
    if split == "val" and not cfg.val_fraction:
        raise ValueError("no val split: val_fraction is 0")
    batch = cfg.batch_size if input_context is None else input_context.get_per_replica_batch_size(cfg.batch_size)
    shards = "train" if split == "val" else split
    ds = _records(data_dir, shards, cfg, training, input_context)
    ds = ds.map(parse_example, num_parallel_calls=AUTOTUNE)
    rule = val_rule(data_dir, cfg.val_fraction) if split in ("train", "val") and cfg.val_fraction else None
    if rule is not None:
        want = split == "val"
        ds = ds.filter(lambda r: tf.equal(is_val(r, rule), want))  # before decoding: the others cost no decode
    ds = ds.map(lambda r: _decode(r, cfg.resize_size), num_parallel_calls=AUTOTUNE)
    if cfg.skip_corrupt:
        ds = ds.ignore_errors()  # records that do not parse or decode
    records = int(read_meta(data_dir)["splits"].get(shards, 0))
    if split == "val":
        records = int(records * rule.fraction) + 1
    mode, why = choose_cache(cfg.cache, data_dir, split, cfg.resize_size, cfg.cache_budget, records)
    if mode == "disk":
        path = _cache_file(data_dir, split, cfg, input_context, rule)
        ds = ds.cache(path)
        why = f"{why}: {path}"
    elif mode == "memory":
        ds = ds.cache()
    if (data_dir, split, mode, why) not in _announced:
        _announced.add((data_dir, split, mode, why))
        how = {"off": "streamed, not cached", "memory": "cached in memory"}.get(mode, "cached on disk")
        log(f"[data] {data_dir} {split}: {how} ({why})")
    if repeat if repeat is not None else training:
        ds = ds.repeat()
    if training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed)
    if training and cfg.pk:
        ds = _pk_groups(ds, *cfg.pk)
    if teacher_outputs is not None:
        ds = ds.map(lambda ex: {**ex, "teacher": teacher_outputs(ex["source"])}, num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda ex: _crop_flip(ex, cfg, training), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = not training
    # tf.data's autotuner keeps probing for more parallelism and, on a few cores, takes them from the
    # training step itself: a ResNet-50 step at 48 px ran 2.4x slower with it on 2 cores (docs/recipe.md).
    options.autotune.enabled = False
    return ds.with_options(options).prefetch(AUTOTUNE)


def memory_budget() -> int:
    """A quarter of the machine's RAM: what --cache=auto lets decoded images take (2 GiB when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def choose_cache(mode: str, data_dir: str, split: str, resize_size: int, budget: int = 0,
                 records: Optional[int] = None) -> Tuple[str, str]:
    """(memory | disk | off, why) for a split: `auto` caches in memory only when the decoded split fits.

    The decoded, resized split takes records × resize² × 3 bytes; a data set too large for the budget
    (default a quarter of RAM) is streamed from the shards every epoch instead of filling memory until the
    machine swaps or the process is killed. memory, disk and off are taken as given. `records`: the split's
    size when meta.json does not say it (the val split carved from train).
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode, f"--cache={mode}"
    budget = budget or memory_budget()
    if records is None:
        records = int(read_meta(data_dir)["splits"].get(split, 0))
    need = records * resize_size * resize_size * 3
    fits = need <= budget
    return ("memory" if fits else "off"), (f"--cache=auto: {need / 2**20:.1f} MiB decoded "
                                           f"{'fits' if fits else 'exceeds'} the {budget / 2**20:.0f} MiB budget")


def _cache_file(data_dir: str, split: str, cfg: InputConfig, input_context,
                rule: Optional[ValRule] = None) -> str:
    """The --cache=disk file of this split, named by what its content depends on, so a changed data set,
    size, decoder or val carve never reads another's images. A lock left by a killed run is removed (one run
    uses a model_dir at a time); another worker of a multi-worker run has its own file."""
    key = {"meta": hashlib.sha256(open(os.path.join(data_dir, META_FILE), "rb").read()).hexdigest(),
           "shards": [[os.path.basename(p), os.path.getsize(p)]
                      for p in shard_paths(data_dir, "train" if split == "val" else split)],
           "resize_size": cfg.resize_size, "skip_corrupt": cfg.skip_corrupt,
           "decode": hashlib.sha256(inspect.getsource(_decode).encode()).hexdigest()}
    if rule is not None:  # a carved split; none keeps the key (and the file) of caches made before carving
        key["val"] = [rule.fraction, rule.by, rule.seed, inspect.getsource(is_val)]
    name = f"{split}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}"
    if input_context is not None and input_context.num_input_pipelines > 1:
        name += f"-pipeline{input_context.input_pipeline_id}of{input_context.num_input_pipelines}"
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    if task:
        name += f"-{task.get('type', 'worker')}{task.get('index', 0)}"
    folder = cfg.cache_dir or os.path.join(data_dir, CACHE_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    if not os.path.exists(path + ".index"):  # tf.data writes PATH_<n>.lockfile and temp files until complete
        for stale in glob.glob(glob.escape(path) + "_[0-9]*"):
            os.remove(stale)
    return path


def pk_split_problem(p: int, k: int, replicas: int) -> Optional[str]:
    """Why P×K batches cannot be shared among `replicas` without splitting an identity, or None.

    Each replica gets P·K / replicas consecutive images of a P×K block and mines its triplets in them alone:
    that share must hold whole runs of K images, and at least two identities for a negative.
    """
    if replicas <= 1:
        return None
    share = p * k / replicas
    if p % replicas == 0 and p // replicas >= 2:
        return None
    return (f"--ids_per_batch={p} × --images_per_id={k} over {replicas} replicas: each replica would get "
            f"{share:g} images, not {'whole identities of ' + str(k) if p % replicas else 'two identities or more'}"
            f" (its triplets are mined in its share alone); use an --ids_per_batch that is a multiple of "
            f"{replicas} and at least {2 * replicas}")


def _pk_groups(ds, p: int, k: int):
    """Reorders a shuffled, repeated stream into blocks of P identities × K images each.

    Batched by P×K afterwards, every batch holds P distinct identities with K images each, so every anchor
    has positives and negatives for triplet mining. Runs of K come from `group_by_window` (identities with
    fewer than K images fill their window across epochs); P runs with a repeated identity are dropped.
    """
    runs = ds.group_by_window(key_func=lambda ex: tf.cast(ex["label"], tf.int64),
                              reduce_func=lambda _, w: w.batch(k), window_size=k)
    runs = runs.filter(lambda g: tf.shape(g["label"])[0] == k)
    blocks = runs.batch(p, drop_remainder=True)
    blocks = blocks.filter(lambda b: tf.size(tf.unique(b["label"][:, 0])[0]) == p)
    return blocks.unbatch().unbatch()


def scan(data_dir: str, split: str, num_classes: Optional[int] = None,
         first_only: bool = False) -> Tuple[List[str], int]:
    """Reads every record of a split as training would; returns (problems, readable records).

    Each problem is one line naming the shard, the record and what is wrong: a CRC error (which ends that
    shard for TF's reader), a record that is not a keras-kd Example, an image that does not decode, a
    label outside [0, num_classes) when labels are used. tf.data's own errors do not say which file; this
    is what names it, run only after such an error or for --skip_corrupt, so the hot path pays nothing.
    """
    problems, good = [], 0
    for path in shard_paths(data_dir, split):
        n = 0
        try:
            for raw in tf.data.TFRecordDataset(path):
                try:
                    rec = parse_example(raw)
                except tf.errors.InvalidArgumentError as e:
                    problems.append(f"{path}: record {n} is not a keras-kd tf.train.Example "
                                    f"({str(e).splitlines()[0][:100]})")
                else:
                    what = _record_problem(rec, num_classes)
                    if what:
                        problems.append(f"{path}: record {n} ({rec['source'].numpy().decode()}): {what}")
                    else:
                        good += 1
                n += 1
                if first_only and problems:
                    return problems, good
        except tf.errors.DataLossError:
            problems.append(f"{path}: corrupt or truncated record after {n} records (CRC check failed); "
                            "TF cannot read past it")
            if first_only:
                return problems, good
    return problems, good


def _record_problem(rec: dict, num_classes: Optional[int]) -> Optional[str]:
    try:
        tf.io.decode_image(rec["image"], channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return "image does not decode"
    label = int(rec["label"])
    if num_classes is not None and not 0 <= label < num_classes:
        return f"label {label} outside [0, {num_classes}) (num_classes of meta.json)"
    return None


def find_bad_record(data_dir: str, split: str, num_classes: Optional[int] = None) -> Optional[str]:
    """The first problem `scan` finds in a split, or None when every record reads."""
    problems, _ = scan(data_dir, split, num_classes, first_only=True)
    return problems[0] if problems else None


@contextlib.contextmanager
def naming_bad_records(data_dir: str, num_classes: Optional[int] = None):
    """Turns tf.data's anonymous read/decode errors into a DataError naming the file and record.

    Only when a bad record is found: any other error of these types is a bug to see with its traceback.
    """
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
        culprit = next(filter(None, (find_bad_record(data_dir, s, num_classes) for s in ("train", "test"))), None)
        if culprit is None:
            raise
        raise DataError(culprit) from None
