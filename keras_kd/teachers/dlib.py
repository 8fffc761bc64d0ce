"""dlib's pretrained face recognition ResNet as an offline teacher: its 128-d embedding of every record.

    python -m keras_kd.teachers.dlib DATA_DIR [--out=PATH] [--flip] [--chip_size=150] [--processes=2]

The teacher is ``dlib_face_recognition_resnet_model_v1`` (a 29-layer ResNet trained on ~3M faces by dlib,
99.38% on LFW in its authors' protocol), shipped as a file in ``face_recognition_models``
(``pip install -r requirements-teachers.txt``; nothing downloads at run time). keras-kd cannot run it in a
Keras graph, so this writes its outputs once, as a teacher-outputs file (``keras_kd/teachers/outputs.py``;
default ``DATA_DIR/teacher_outputs/dlib.npz``) holding ``out_embedding`` [N, 128] for both splits, and with
``--flip`` ``out_embedding_flip``, the embedding of each image flipped left-right (twice the time), which a
flipped training image is distilled towards.

Alignment (`keras_kd.data.face_align.Aligner`): the stored images are already centred face crops, so there
is no detector: dlib's 5-point ``shape_predictor_5_face_landmarks`` runs on the box of the image's middle two
thirds, and ``dlib.get_face_chip(img, shape, size, padding=0.25)`` cuts the aligned chip the network was
trained on (150 px; with another ``--chip_size`` the chip is cut at that size and resized to 150: a blurrier
face). Data converted with ``--face_align`` holds such chips already; aligning one again moves it little.

Measured on ../shared/data/celeba_id_subset_144 (144 px Haar crops), test split, from ``eval_outputs``:
by identity (``convert --layout=celeba --split_by=identity``: 692 images of 44 unseen people) rank-1 0.981,
pair acc 0.944 and TAR@FAR=1e-3 0.937 on its 377 pairs.txt pairs (0.962 / 0.864 on 3,000 balanced pairs);
by image (default split: 663 images, 205 people) rank-1 0.946. 13 images/s on 2 shared CPU cores (2 processes).

A missing dlib, or a DATA_DIR that is not converted data, ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import threading
import time
from typing import Callable, Iterable, Iterator, List, Optional

import numpy as np

from keras_kd.data.face_align import PADDING, Aligner, DlibMissing, import_dlib

NEEDS = "keras_kd.teachers.dlib needs the optional teachers: pip install -r requirements-teachers.txt"
TEACHER = "dlib_face_recognition_resnet_model_v1 (128-d), 5-point alignment on the middle two thirds, 150 px chips"
DEFAULT_OUT = os.path.join("teacher_outputs", "dlib.npz")
NET_CHIP = 150      # the network's input side: dlib refuses any other
WIDTH = 128
CHUNK = 32          # images per task sent to a worker process
LOG_EVERY = 500

# This module imports neither TensorFlow nor dlib at the top: worker processes (spawned) import it to run
# `embed_images`, and each builds its own dlib models there (`_init`): dlib objects do not pickle.
_models: Optional[tuple] = None


def _init(chip_size: int) -> None:
    global _models
    dlib, frm = import_dlib()
    _models = (dlib, Aligner(chip_size), dlib.face_recognition_model_v1(frm.face_recognition_model_location()))


def embed_images(images: List[np.ndarray]) -> np.ndarray:
    """float32 [n, 128] dlib descriptors of uint8 RGB images [H, W, 3] (in this process's models)."""
    if _models is None:
        raise RuntimeError("call _init(chip_size) first")
    dlib, align, net = _models
    chips = []
    for img in images:
        chip = align(img)
        if align.size != NET_CHIP:
            chip = np.ascontiguousarray(dlib.resize_image(chip, NET_CHIP, NET_CHIP), np.uint8)
        chips.append(chip)
    if not chips:
        return np.zeros((0, WIDTH), np.float32)
    return np.array([np.array(d) for d in net.compute_face_descriptor(chips)], np.float32).reshape(-1, WIDTH)


def embed_flipped(images: List[np.ndarray]) -> np.ndarray:
    """float32 [n, 2, 128]: each image's descriptor and its mirror image's."""
    mirrored = [np.ascontiguousarray(img[:, ::-1]) for img in images]
    both = embed_images(list(images) + mirrored)
    return np.stack([both[:len(images)], both[len(images):]], axis=1)


def _records(data_dir: str, splits: Iterable[str]) -> Iterator[tuple]:
    """(split, source, uint8 RGB image) of every record of `splits`, in file order."""
    from keras_kd.data.example import parse_example, shard_paths
    from keras_kd.keras import tf

    def decode(rec):
        return rec["source"], tf.io.decode_image(rec["image"], channels=3, expand_animations=False)

    for split in splits:
        files = shard_paths(data_dir, split)
        if not files:
            continue
        for source, image in tf.data.TFRecordDataset(files).map(parse_example).map(decode):
            yield split, source.numpy().decode(), image.numpy()


def _chunks(records: Iterator[tuple], meta: list) -> Iterator[List[np.ndarray]]:
    """Images in lists of CHUNK; (split, source) of each appended to `meta` as it is read."""
    chunk: List[np.ndarray] = []
    for split, source, image in records:
        meta.append((split, source))
        chunk.append(image)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write(data_dir: str, out: Optional[str] = None, chip_size: int = NET_CHIP, processes: int = 2,
          log: Callable[[str], None] = print, flip: bool = False) -> str:
    """Writes dlib's embedding of every record of `data_dir` (both splits) as a teacher-outputs file; its path.
    `flip`: the mirror image's embedding too (out_embedding_flip).

    DataError when `data_dir` is not converted data, DlibMissing without dlib.
    """
    from keras_kd.data.example import SPLITS, DataError, read_meta
    from keras_kd.teachers import outputs

    if chip_size < 16:
        raise ValueError(f"chip_size must be at least 16, got {chip_size}")
    import_dlib()
    meta = read_meta(data_dir)
    total = sum(int(meta.get("splits", {}).get(s, 0)) for s in SPLITS)
    out = out or os.path.join(data_dir, DEFAULT_OUT)
    processes = max(1, min(processes, os.cpu_count() or 1))
    log(f"[dlib] {total} images of {data_dir} ({meta['name']}), {processes} process(es), {chip_size} px chips"
        + (", and each one flipped" if flip else ""))
    embed = embed_flipped if flip else embed_images

    keys: list = []
    embeddings: List[np.ndarray] = []
    start = time.time()
    next_log = LOG_EVERY
    chunks = _chunks(_records(data_dir, SPLITS), keys)
    pool = None
    # imap reads its input as fast as it can: at most `ahead` chunks of decoded images wait for a worker
    ahead, stop = threading.BoundedSemaphore(4 * processes), threading.Event()

    def bounded(items):
        for item in items:
            while not ahead.acquire(timeout=0.2):
                if stop.is_set():
                    return
            yield item

    if processes > 1:
        # spawn: the parent runs TensorFlow's threads, which a forked child must not inherit
        pool = multiprocessing.get_context("spawn").Pool(processes, initializer=_init, initargs=(chip_size,))
        results = pool.imap(embed, bounded(chunks))
    else:
        _init(chip_size)
        results = map(embed, bounded(chunks))
    try:
        n = 0
        for emb in results:
            ahead.release()
            embeddings.append(emb)
            n += len(emb)
            if n >= next_log:
                log(f"[dlib] {n}/{total} images, {n / (time.time() - start):.1f} images/s")
                next_log += LOG_EVERY
    finally:
        stop.set()
        if pool is not None:
            pool.terminate()
            pool.join()
    if not keys:
        raise DataError(f"{data_dir}: no records to embed")
    emb = np.concatenate(embeddings)
    assert len(emb) == len(keys), (len(emb), len(keys))
    seconds = time.time() - start
    splits = [s for s, _ in keys]
    outs = {"embedding": emb[:, 0], "embedding" + outputs.FLIP: emb[:, 1]} if flip else {"embedding": emb}
    outputs.save(out, [src for _, src in keys], splits, outs, data_dir, teacher=TEACHER,
                 chip_size=chip_size, padding=PADDING, box="middle two thirds of the stored image",
                 images_per_s=round(len(emb) / seconds, 2))
    log(f"[dlib] wrote {len(emb)} embeddings ({splits.count('train')} train, {splits.count('test')} test) to "
        f"{out} in {seconds:.0f} s, {len(emb) / seconds:.1f} images/s")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_kd.teachers.dlib",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", metavar="DATA_DIR", help="converted data (python -m keras_kd.data.convert)")
    parser.add_argument("--out", default=None, help=f"teacher-outputs file (default: DATA_DIR/{DEFAULT_OUT})")
    parser.add_argument("--chip_size", type=int, default=NET_CHIP,
                        help="side of the aligned face chip; other than 150 it is resized to the network's 150")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (1: none)")
    parser.add_argument("--flip", action="store_true",
                        help="also each image's mirror image's embedding (out_embedding_flip; twice the time)")
    args = parser.parse_args(argv)
    if args.chip_size < 16:
        parser.error(f"--chip_size must be at least 16, got {args.chip_size}")
    try:
        import_dlib()
    except DlibMissing:
        print(NEEDS, file=sys.stderr)
        return 2
    from keras_kd.data.example import DataError
    try:
        write(args.data_dir, args.out, args.chip_size, args.processes, flip=args.flip)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
