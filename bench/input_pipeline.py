"""Input pipeline images/s alone (TFRecord → augmented batch) ÷ the train step's images/s (goal ≥ 3).

    python -m bench.input_pipeline [--sizes=48,224] [--repeats=3]

The pipeline is `keras_kd.data.pipeline.make_dataset(..., training=True)` exactly as the Runner calls it,
on synthetic TFRecords (PNG-encoded, as a converted face set is JPEG/PNG): the quick preset's set at 48 px
(30×36 images of 56 px), and 200 images of 256 px at the paper's 224. Variants show what each tf.data
option is worth:

    default            as shipped: parallel interleave and maps (AUTOTUNE), decoded+resized images cached
                       in memory, non-deterministic order, prefetch (AUTOTUNE)
    + teacher cache    default plus the cached teacher outputs attached by source (--teacher_cache)
    no image cache     decode and resize every record every epoch (what a set too big for memory pays)
    deterministic      element order fixed (as evaluation has it)
    1 thread           tf.data's private thread pool limited to one thread
    no image cache, 1 thread    both: what parallel decoding is worth

Each variant is timed over `--batches` batches after its cache is filled, in alternating rounds. The
train steps it is compared with are measured in the same run: the plain /8 student step and the /8
distillation step with cached teacher outputs (the fastest steps, so the hardest test for the pipeline).
"""
from __future__ import annotations

import dataclasses
import gc
import statistics
import time

import numpy as np

from bench import common
from keras_kd.data import pipeline
from keras_kd.data.example import parse_example, shard_paths
from keras_kd.distill import teacher_cache
from keras_kd.keras import keras, tf
from keras_kd.models import resnet

SETS = {common.QUICK: dict(identities=30, images=36, size=56), common.PAPER: dict(identities=20, images=10, size=256)}
BATCH = {common.QUICK: 32, common.PAPER: 16}


def fake_cache(data_dir: str, classes: int, hidden: int = 2048) -> teacher_cache.TeacherCache:
    """A TeacherCache of the right shapes for every training record (values do not matter for speed)."""
    sources = [r["source"].numpy() for r in tf.data.TFRecordDataset(shard_paths(data_dir, "train")).map(parse_example)]
    rng = np.random.default_rng(0)
    n = len(sources)
    return teacher_cache.TeacherCache(np.array(sources, dtype=object), {
        "logits": rng.normal(size=(n, classes)).astype(np.float32),
        "hidden": rng.normal(size=(n, hidden)).astype(np.float32)}, key={})


def variants(data_dir: str, cfg: pipeline.InputConfig, classes: int) -> dict:
    def with_options(ds, **kw):
        o = tf.data.Options()
        for k, v in kw.items():
            if k == "threads":
                o.threading.private_threadpool_size = v
            else:
                setattr(o, k, v)
        return ds.with_options(o)

    make = lambda c=cfg, **kw: pipeline.make_dataset(data_dir, "train", c, training=True, **kw)  # noqa: E731
    return {
        "default": make(),
        "+ teacher cache": make(teacher_outputs=fake_cache(data_dir, classes)),
        "no image cache": make(dataclasses.replace(cfg, cache="off")),
        "deterministic": with_options(make(), deterministic=True),
        "1 thread": with_options(make(), threads=1),
        "no image cache, 1 thread": with_options(make(dataclasses.replace(cfg, cache="off")), threads=1),
    }


def time_pipelines(datasets: dict, batches: int, repeats: int, warm_batches: int) -> dict:
    for ds in datasets.values():  # fills each dataset's image cache (shared by its later iterators)
        it = iter(ds)
        for _ in range(warm_batches):
            next(it)
        del it
    times = {k: [] for k in datasets}
    for _ in range(repeats):
        for k, ds in datasets.items():
            it = iter(ds)
            next(it), next(it)  # pipeline threads started
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            times[k].append((time.perf_counter() - t0) / batches)
            del it
            gc.collect()
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> list:
    p = common.parser(__doc__)
    p.add_argument("--sizes", default=f"{common.QUICK},{common.PAPER}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=30, help="batches timed per round")
    args = p.parse_args(argv)
    common.header("input_pipeline")
    rows, summary = [], []
    for size in common.ints(args.sizes):
        spec = SETS.get(size, SETS[common.QUICK])
        data_dir = common.synthetic_data(spec["identities"], spec["images"], spec["size"])
        n_train = sum(1 for _ in tf.data.TFRecordDataset(shard_paths(data_dir, "train")))
        batch = BATCH.get(size, 32)
        classes = common.QUICK_CLASSES if size <= 64 else common.PAPER_CLASSES
        cfg = pipeline.InputConfig(image_size=size, batch_size=batch)
        secs = time_pipelines(variants(data_dir, cfg, classes), args.batches, args.repeats,
                              warm_batches=n_train // batch + 2)
        # The train steps, same size and batch, same run.
        keras.utils.set_random_seed(0)
        teacher = resnet.build_model(1, size, classes, name="teacher")
        x, y = common.random_batch(batch, size, classes)
        steps = {"plain /8": common.step_fn(common.distiller(8, size, classes, "plain"), x, y),
                 "cached /8": common.step_fn(common.distiller(8, size, classes, "cached", teacher), x,
                                             common.with_teacher_outputs(teacher, x, y))}
        step_secs = common.rounds(steps, args.repeats, 3 if size <= 64 else 1)
        fastest = min(step_secs.values())
        for k, s in secs.items():
            rows.append({"size": size, "batch": batch, "variant": k, "img_s": batch / s,
                         "ratio": fastest / s, "images": n_train})
        for k, s in step_secs.items():
            rows.append({"size": size, "batch": batch, "variant": f"train step {k}", "img_s": batch / s,
                         "ratio": fastest / s, "images": n_train})
        summary.append((size, step_secs, secs, fastest))
        print(f"# {size}px done; {common.load()}", flush=True)
        del teacher, steps
        gc.collect()
    print()
    print(common.table(["input", "batch", "what", "images/s", "÷ fastest train step (images/s ratio)"],
                       [[r["size"], r["batch"], r["variant"], r["img_s"], f"{r['ratio']:.1f}"] for r in rows]))
    common.write_json(args.json, "input_pipeline", rows)
    common.footer()
    print("RATIO input_pipeline: pipeline images/s ÷ fastest train step images/s (goal ≥ 3): " + "; ".join(
        f"{size}px default {fastest / secs['default']:.1f}, with teacher cache {fastest / secs['+ teacher cache']:.1f}"
        for size, _, secs, fastest in summary))
    return rows


if __name__ == "__main__":
    main()
