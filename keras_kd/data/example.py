"""The TFRecord schema of keras-kd, and the writer that turns items into split, sharded record files.

A converted data directory is the only thing the training pipeline reads:

    DIR/meta.json                       what the data is (see `write_dataset`)
    DIR/train-00000-of-00004.tfrecord   tf.train.Example records, the schema below
    DIR/test-00000-of-00001.tfrecord
    DIR/pairs.txt                       optional: "source_a source_b same(1|0)" among test images

Landmarks are stored in pixel coordinates of the stored image, as 10 floats x1,y1,...,x5,y5 in the order
left eye, right eye, nose, left mouth corner, right mouth corner ("left" = the image's left).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from keras_kd import io
from keras_kd.keras import tf

NUM_LANDMARKS = 5
META_FILE = "meta.json"
PAIRS_FILE = "pairs.txt"
SPLITS = ("train", "test")

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "image/landmarks": tf.io.FixedLenFeature([2 * NUM_LANDMARKS], tf.float32,
                                             default_value=[-1.0] * (2 * NUM_LANDMARKS)),
    "image/has_landmarks": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "image/source": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


class DataError(ValueError):
    """Bad input data; the message names the file and what is wrong."""


@dataclasses.dataclass
class Item:
    """One image before conversion. `load` returns the encoded image bytes (JPEG/PNG) lazily."""

    source: str                      # file name or synthetic id, unique within a data set
    label: object                    # identity key (any hashable); remapped to 0..C-1 on writing
    load: Callable[[], bytes]
    landmarks: Optional[np.ndarray] = None  # [5, 2] pixel coordinates (x, y)
    origin: str = ""                 # where its annotation was read ("list.txt:12"), for error messages


def make_example(image: bytes, height: int, width: int, label: int, source: str,
                 landmarks: Optional[np.ndarray] = None) -> tf.train.Example:
    def _int(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "image/height": _int(height),
        "image/width": _int(width),
        "image/label": _int(label),
        "image/source": tf.train.Feature(bytes_list=tf.train.BytesList(value=[source.encode()])),
        "image/has_landmarks": _int(landmarks is not None),
    }
    if landmarks is not None:
        points = np.asarray(landmarks, np.float32).reshape(-1)
        if points.shape != (2 * NUM_LANDMARKS,):
            raise DataError(f"{source}: expected {NUM_LANDMARKS} landmarks (x, y), got {points.size // 2}")
        feature["image/landmarks"] = tf.train.Feature(float_list=tf.train.FloatList(value=points))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(serialized: tf.Tensor) -> dict:
    """Parses one serialized record; the image stays encoded (decode where it is needed)."""
    f = tf.io.parse_single_example(serialized, FEATURES)
    return {
        "image": f["image/encoded"],
        "height": f["image/height"],
        "width": f["image/width"],
        "label": f["image/label"],
        "landmarks": tf.reshape(f["image/landmarks"], [NUM_LANDMARKS, 2]),
        "has_landmarks": tf.cast(f["image/has_landmarks"], tf.bool),
        "source": f["image/source"],
    }


def split_items(items: Sequence[Item], test_fraction: float = 0.2, by: str = "image",
                seed: int = 0) -> dict:
    """Deterministic train/test split: by image (the paper's 80/20) or by identity (open set).

    The split depends only on each item's source name (or identity) and the seed, so adding files to a
    data set does not move the existing ones between splits.
    """
    if by not in ("image", "identity"):
        raise ValueError(f"split by must be 'image' or 'identity', got {by!r}")

    def u(key) -> float:
        h = hashlib.sha1(f"{seed}:{key}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2.0**64

    out = {"train": [], "test": []}
    for it in items:
        key = it.source if by == "image" else it.label
        out["test" if u(key) < test_fraction else "train"].append(it)
    return out


def shard_paths(data_dir: str, split: str) -> list:
    return sorted(tf.io.gfile.glob(os.path.join(data_dir, f"{split}-*-of-*.tfrecord")))


def write_dataset(out_dir: str, items: Iterable[Item], name: str, *, synthetic: bool = False,
                  test_fraction: float = 0.2, split_by: str = "image", seed: int = 0,
                  records_per_shard: int = 2000, pairs: Optional[Sequence[tuple]] = None,
                  all_test: bool = False, extra_meta: Optional[dict] = None, log=print) -> dict:
    """Writes items as split, sharded TFRecords plus meta.json; returns the meta dict.

    Undecodable images are counted and skipped (listed in the summary), never fatal: one bad file in a
    large crawl should not cost the conversion. `all_test=True` writes everything to the test split (an
    evaluation-only set such as LFW). Labels are remapped to 0..C-1 in sorted order of the original keys;
    `meta["class_names"]` keeps the original keys. `extra_meta` adds keys (how the images were made, e.g.
    the face crop's box and the detector's hit rate).
    """
    items = list(items)
    if not items:
        raise DataError(f"{name}: no images found to convert")
    keys = sorted({it.label for it in items}, key=lambda k: (str(type(k)), k))
    index = {k: i for i, k in enumerate(keys)}
    splits = {"train": [], "test": list(items)} if all_test else split_items(
        items, test_fraction, split_by, seed)
    os.makedirs(out_dir, exist_ok=True)
    # Shards are written aside and moved in only when all are written: an error or a kill halfway leaves
    # the directory's previous contents whole.
    staging = tempfile.mkdtemp(dir=out_dir, prefix=".partial-")
    try:
        counts, skipped, sizes, has_lm, written = _write_shards(staging, splits, index, records_per_shard)
        for old in tf.io.gfile.glob(os.path.join(out_dir, "*-of-*.tfrecord")):
            tf.io.gfile.remove(old)
        for path in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, path), os.path.join(out_dir, path))
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    test_sources = {it.source for it in splits["test"]} & written  # not pairs of skipped images
    kept_pairs = [p for p in (pairs or []) if p[0] in test_sources and p[1] in test_sources]
    pairs_path = os.path.join(out_dir, PAIRS_FILE)
    if kept_pairs:
        io.write_text(pairs_path, "".join(f"{a} {b} {int(s)}\n" for a, b, s in kept_pairs))
    elif tf.io.gfile.exists(pairs_path):  # left by an earlier conversion into the same directory
        tf.io.gfile.remove(pairs_path)
    meta = {
        "name": name,
        "synthetic": synthetic,
        "num_classes": len(keys),
        "class_names": [str(k) for k in keys],
        "has_landmarks": has_lm,
        "image_size": list(sizes.pop()) if len(sizes) == 1 else None,
        "splits": counts,
        "split_by": "none (all test)" if all_test else split_by,
        "test_fraction": test_fraction,
        "seed": seed,
        "pairs": len(kept_pairs),
        "skipped": len(skipped),
        **(extra_meta or {}),
    }
    io.write_text(os.path.join(out_dir, META_FILE), json.dumps(meta, indent=1))
    log(f"[convert] {name}: wrote {counts.get('train', 0)} train + {counts.get('test', 0)} test records, "
        f"{len(keys)} identities, {len(kept_pairs)} test pairs to {out_dir}; skipped {len(skipped)} "
        "undecodable image(s)")
    for s in skipped[:20]:
        log(f"[convert]   skipped {s}")
    if len(skipped) > 20:
        log(f"[convert]   ... and {len(skipped) - 20} more")
    return meta


def _write_shards(out_dir: str, splits: dict, index: dict, records_per_shard: int):
    counts, skipped, sizes, has_lm, written = {}, [], set(), False, set()
    for split in SPLITS:
        chosen = splits[split]
        n_shards = max(1, -(-len(chosen) // records_per_shard))
        writers = [tf.io.TFRecordWriter(os.path.join(out_dir, f"{split}-{s:05d}-of-{n_shards:05d}.tfrecord"))
                   for s in range(n_shards)]
        n = 0
        try:
            for it in chosen:
                try:
                    data = it.load()
                    # A full decode, not just the JPEG header: a truncated file would pass the header check
                    # and then stop training when the input pipeline decodes it.
                    shape = tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False))
                    h, w = int(shape[0]), int(shape[1])
                except (OSError, tf.errors.OpError, ValueError) as e:
                    reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(e))  # TF's op-name prefix
                    skipped.append(f"{it.source}: {reason.splitlines()[0][:120]}")
                    continue
                if it.landmarks is not None:
                    check_landmarks(f"{it.origin}: {it.source}" if it.origin else it.source, it.landmarks, w, h)
                    has_lm = True
                sizes.add((h, w))
                ex = make_example(data, h, w, index[it.label], it.source, it.landmarks)
                writers[n % n_shards].write(ex.SerializeToString())
                written.add(it.source)
                n += 1
        finally:
            for wr in writers:
                wr.close()
        counts[split] = n
    return counts, skipped, sizes, has_lm, written


def check_landmarks(source: str, landmarks, width: int, height: int) -> None:
    """Landmarks outside their image mean a wrong list line (order, image, units): stop, naming it."""
    points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    outside = [i for i, (x, y) in enumerate(points) if not (0 <= x <= width and 0 <= y <= height)]
    if outside:
        i = outside[0]
        raise DataError(f"{source}: landmark {i + 1} at ({points[i, 0]:g}, {points[i, 1]:g}) lies outside the "
                        f"{width}×{height} image ({len(outside)} of {len(points)} points outside)")


def read_meta(data_dir: str) -> dict:
    path = os.path.join(data_dir, META_FILE)
    if not tf.io.gfile.exists(data_dir):
        raise DataError(f"{data_dir}: data directory does not exist")
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path}: missing; convert the data first (python -m keras_kd.data.convert)")
    try:
        with tf.io.gfile.GFile(path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    for split in SPLITS:
        if meta.get("splits", {}).get(split) and not shard_paths(data_dir, split):
            raise DataError(f"{data_dir}: meta.json lists {split} records but no {split}-*.tfrecord file is there")
    return meta


def read_pairs(data_dir: str) -> list:
    path = os.path.join(data_dir, PAIRS_FILE)
    if not tf.io.gfile.exists(path):
        return []
    out = []
    with tf.io.gfile.GFile(path) as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 3 or parts[2] not in ("0", "1"):
                raise DataError(f"{path}:{ln}: expected 'source_a source_b 0|1', got {line.strip()!r}")
            out.append((parts[0], parts[1], int(parts[2])))
    return out


def die(msg: str) -> None:
    """One clear line on stderr and a non-zero exit: the contract for bad input at the CLI."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)
