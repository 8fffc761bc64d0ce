"""Teacher outputs from any framework: a file of per-record teacher outputs, for offline distillation.

A teacher keras-kd cannot run (dlib, PyTorch, MXNet, an API) is run once by whoever has it, over the
converted data, and its outputs are written to one ``.npz`` file (``--teacher_outputs=PATH``):

    sources        str [N]           each record's ``image/source`` (unique within the data set)
    splits         str [N]           "train" or "test": the split of the record
    out_<name>     float32 [N, ...]  one array per output: ``embedding`` [N, D], ``logits`` [N, C],
                                     ``hidden`` [N, D] (K; ``embedding`` when absent), ``landmarks`` [N, 5, 2]
                                     in crop-normalized (x, y) of the un-augmented centre crop
    out_<name>_flip                  optional, for every output or none: the same output for the centre crop
                                     flipped left-right (landmarks in the flipped crop's coordinates)
    meta           str (JSON)        {"format": "keras-kd/teacher-outputs", "version": 1, "data": meta.json's
                                     name, "data_meta_sha256": ..., "teacher": free text, ...}

``save`` writes it (numpy only: any Python process can); ``load`` checks it against the data before anything
trains (the same data set by meta.json's hash, every train record present, finite values, consistent
shapes) and returns a ``TeacherCache``: the train split's outputs stream with each batch exactly as
``--teacher_cache`` targets do. A training image is a random crop, flipped half the time; with the flipped
view in the file, a flipped image is distilled towards the teacher's outputs for the flipped face, not for
the face it mirrors (a face descriptor is not flip-invariant). The test split's outputs, when present, let
the teacher be evaluated like any model (``eval_outputs``).
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from keras_kd.data import pipeline
from keras_kd.data.example import META_FILE, NUM_LANDMARKS, DataError, parse_example, read_meta, shard_paths
from keras_kd.distill.teacher_cache import TeacherCache
from keras_kd.io import sha256_file, write_npz
from keras_kd.keras import tf

FORMAT = "keras-kd/teacher-outputs"
VERSION = 1
NAMES = ("embedding", "logits", "hidden", "landmarks")
FLIP = pipeline.FLIP_VIEW  # key suffix of an output's flipped view: out_embedding_flip


def base_name(key: str) -> str:
    """The output a key holds a view of: "embedding" for "embedding" and "embedding_flip"."""
    return key[:-len(FLIP)] if key.endswith(FLIP) else key


def data_records(data_dir: str, split: str) -> Dict[str, np.ndarray]:
    """{"source": str [N], "label": int [N]} of a split's records, in file order (images not decoded)."""
    files = shard_paths(data_dir, split)
    if not files:
        raise DataError(f"{data_dir}: no {split}-*.tfrecord files")
    sources, labels = [], []
    for rec in tf.data.TFRecordDataset(files).map(parse_example):
        sources.append(rec["source"].numpy().decode())
        labels.append(int(rec["label"].numpy()))
    return {"source": np.array(sources, dtype=object), "label": np.array(labels, np.int64)}


def save(path: str, sources: Sequence[str], splits: Sequence[str], outputs: Mapping[str, np.ndarray],
         data_dir: str, teacher: str, **extra) -> None:
    """Writes a teacher-outputs file for the records of `data_dir` (atomically: temp file + rename)."""
    unknown = {k for k in outputs if base_name(k) not in NAMES}
    if unknown:
        raise ValueError(f"unknown teacher outputs {sorted(unknown)}; known: {', '.join(NAMES)} (+ {FLIP})")
    meta = {"format": FORMAT, "version": VERSION, "data": read_meta(data_dir)["name"],
            "data_meta_sha256": sha256_file(os.path.join(data_dir, META_FILE)), "teacher": teacher, **extra}
    write_npz(path, sources=np.array([str(s) for s in sources]), splits=np.array([str(s) for s in splits]),
              meta=np.array(json.dumps(meta, sort_keys=True)),
              **{f"out_{k}": np.asarray(v, np.float32) for k, v in outputs.items()})


def read(path: str) -> tuple:
    """(meta, sources, splits, outputs) of a teacher-outputs file; DataError naming the file when it is not one."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such teacher-outputs file")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            sources = z["sources"].astype(str)
            splits = z["splits"].astype(str)
            outputs = {f[len("out_"):]: z[f].astype(np.float32) for f in z.files if f.startswith("out_")}
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:  # TypeError: a .npy, not an .npz
        raise DataError(f"{path}: not a teacher-outputs file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; expected "
                        f"{FORMAT!r} version {VERSION}")
    n = len(sources)
    if len(splits) != n:
        raise DataError(f"{path}: {len(splits)} splits for {n} sources")
    if not outputs:
        raise DataError(f"{path}: holds no teacher output (out_embedding, out_logits, out_hidden or out_landmarks)")
    for k, v in outputs.items():
        name = base_name(k)
        if name not in NAMES:
            raise DataError(f"{path}: unknown output out_{k}; known: {', '.join(NAMES)} (each with or without {FLIP})")
        if len(v) != n:
            raise DataError(f"{path}: out_{k} has {len(v)} rows for {n} records")
        want = 3 if name == "landmarks" else 2
        if v.ndim != want or (name == "landmarks" and v.shape[1:] != (NUM_LANDMARKS, 2)):
            raise DataError(f"{path}: out_{k} has shape {list(v.shape)}; expected "
                            + ("[N, 5, 2]" if name == "landmarks" else "[N, width]"))
        if name not in outputs:
            raise DataError(f"{path}: out_{k} without out_{name}")
        if k != name and v.shape != outputs[name].shape:
            raise DataError(f"{path}: out_{k} has shape {list(v.shape)}, out_{name} {list(outputs[name].shape)}")
        if not np.all(np.isfinite(v)):
            row = int(np.argwhere(~np.isfinite(v))[0][0])
            raise DataError(f"{path}: out_{k} holds NaN or infinite values (row {row}, {sources[row]})")
    flipped = {base_name(k) for k in outputs if k.endswith(FLIP)}
    lacking = sorted(set(views(outputs)) - flipped)
    if flipped and lacking:
        raise DataError(f"{path}: flipped views for some outputs only (none for out_{lacking[0]}): "
                        "give every output's or none")
    if len(set(sources.tolist())) != n:
        raise DataError(f"{path}: a source is listed twice")
    if "hidden" not in outputs and "embedding" in outputs:
        outputs["hidden"] = outputs["embedding"]  # the teacher's K is its embedding
        if "embedding" + FLIP in outputs:
            outputs["hidden" + FLIP] = outputs["embedding" + FLIP]
    return meta, sources, splits, outputs


def views(outputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The outputs without their flipped views: what the teacher outputs for one image."""
    return pipeline.teacher_view(outputs)


def _check_data(path: str, meta: dict, data_dir: str) -> None:
    sha = sha256_file(os.path.join(data_dir, META_FILE))
    if meta.get("data_meta_sha256") != sha:
        raise DataError(f"{path}: made for the data {meta.get('data')!r} (meta.json sha256 "
                        f"{str(meta.get('data_meta_sha256'))[:12]}), not for {data_dir} ({read_meta(data_dir)['name']!r}, "
                        f"{sha[:12]}); write it again for this data")


def load(path: str, data_dir: str, split: str = "train") -> TeacherCache:
    """The teacher's outputs for every `split` record of `data_dir`, checked against the data."""
    meta, sources, splits, outputs = read(path)
    _check_data(path, meta, data_dir)
    want = data_records(data_dir, split)["source"]
    index = {s: i for i, s in enumerate(sources.tolist()) if splits[i] == split}
    missing = [s for s in want if s not in index]
    if missing:
        raise DataError(f"{path}: {len(missing)} of the {len(want)} {split} records of {data_dir} have no teacher "
                        f"output (first: {missing[0]})")
    rows = np.array([index[s] for s in want], np.int64)
    key = {"teacher_outputs": os.path.abspath(path), "teacher_outputs_sha256": sha256_file(path), **meta}
    return TeacherCache(np.array([s.encode() for s in want], dtype=object),
                        {k: v[rows] for k, v in outputs.items()}, key, path)


def eval_outputs(path: str, data_dir: str) -> Optional[Dict[str, np.ndarray]]:
    """The teacher's outputs on the test split, in the test records' order, with their labels and sources;
    None when the file holds no test record (the teacher then cannot be evaluated)."""
    meta, sources, splits, outputs = read(path)
    recs = data_records(data_dir, "test")
    index = {s: i for i, s in enumerate(sources.tolist()) if splits[i] == "test"}
    if not index:
        return None
    _check_data(path, meta, data_dir)  # same source names are not the same images: a --face_crop set keeps them
    missing = [s for s in recs["source"] if s not in index]
    if missing:
        raise DataError(f"{path}: {len(missing)} of the {len(recs['source'])} test records of {data_dir} have no "
                        f"teacher output (first: {missing[0]})")
    rows = np.array([index[s] for s in recs["source"]], np.int64)
    return {**{k: v[rows] for k, v in views(outputs).items()}, "label": recs["label"],
            "source": np.array([s.encode() for s in recs["source"]], dtype=object)}
