"""Exported students: file size and LiteRT latency per format vs the teacher fp32; SavedModel serving latency.

    python -m bench.export_latency [--size=224] [--widths=2,4,8] [--runs=30]

Each network (the alignment model: trunk + landmark head; the class head is not in its serving graph)
goes through the project's own export code, into a temporary directory: `export.saved_model.save` (TF
Serving layout, pre-processing inside) and `export.tflite.convert` (fp32, fp16, dynamic-range int8, full
int8 calibrated on a few images). Weights are freshly initialized, not trained: sizes and latencies do not
depend on their values (the metrics of trained exports are in each run's results.md).

    LiteRT   `ai_edge_litert.interpreter.Interpreter(num_threads=1 or 2)`, the serving_crop signature, one
             image; median of --runs invocations after 3 warm-up ones
    Serving  the SavedModel loaded as TF Serving loads it (tf.saved_model.load), signatures serving_crop
             (a resized crop) and serving_default (any size; antialiased resize + crop inside), at batch
             1, 8 and 32 of 256×256 images; median of rounds, ms per batch and per image
"""
from __future__ import annotations

import gc
import os
import shutil
import tempfile

import numpy as np

from bench import common
from export import saved_model, tflite
from keras_kd.keras import keras, tf
from keras_kd.models import network, resnet

TASK = "align"
KINDS = ("fp32", "fp16", "dynamic", "int8")


def lite_latency(path: str, threads: int, runs: int) -> float:
    """Seconds: the median single-image call of export's own latency measurement (export.tflite.latency_ms)."""
    return tflite.latency_ms(path, runs=runs, warmup=3, threads=threads) / 1e3


def tree_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv=None) -> list:
    p = common.parser(__doc__)
    p.add_argument("--size", type=int, default=common.PAPER)
    p.add_argument("--widths", default="2,4,8")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3, help="rounds of SavedModel serving calls (median)")
    args = p.parse_args(argv)
    common.header("export_latency")
    size = args.size
    tmp = tempfile.mkdtemp(prefix="bench-export-")
    rng = np.random.default_rng(0)
    rep_images = [rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32) for _ in range(8)]
    representative = lambda: ({"image": x} for x in rep_images)  # noqa: E731
    rows, serving = [], []
    try:
        for width in [1] + common.ints(args.widths):
            name = "teacher" if width == 1 else f"student_d{width}"
            keras.utils.set_random_seed(0)
            model = resnet.build_model(width, size, common.QUICK_CLASSES, heads=("landmarks",), name=name)
            flops = network.count_flops(model)
            sm = os.path.join(tmp, name, "saved_model", "1")
            saved_model.save(model, TASK, size, sm)
            kinds = ("fp32",) if width == 1 else KINDS
            for kind in kinds:
                path = os.path.join(tmp, name, f"model_{kind}.tflite")
                with open(path, "wb") as f:
                    f.write(tflite.convert(sm, kind, representative if kind == "int8" else None))
                lat = {t: lite_latency(path, t, args.runs) for t in (1, 2)}
                rows.append({"model": name, "format": f"tflite_{kind}", "size_kb": os.path.getsize(path) / 1024,
                             "ms_1": 1e3 * lat[1], "ms_2": 1e3 * lat[2], "flops": flops})
                print(f"# {name} {kind}: {rows[-1]['size_kb']:.0f} kB, {1e3 * lat[1]:.2f} ms (1 thread), "
                      f"{1e3 * lat[2]:.2f} ms (2); {common.load()}", flush=True)
            rows.append({"model": name, "format": "saved_model", "size_kb": tree_size(sm) / 1024, "flops": flops})
            # SavedModel serving: as TF Serving runs it
            loaded = tf.saved_model.load(sm)
            for sig in ("serving_crop", "serving_default"):
                fn = loaded.signatures[sig]
                for b in common.ints(args.batches):
                    side = size if sig == "serving_crop" else 256
                    x = tf.constant(rng.uniform(0, 255, (b, side, side, 3)).astype(np.float32))
                    secs = common.rounds({"call": lambda: fn(image=x)["landmarks"].numpy()}, args.repeats,
                                         number=3 if b == 1 else 1, warmup=2)["call"]
                    serving.append({"model": name, "signature": sig, "batch": b, "ms_batch": 1e3 * secs,
                                    "ms_image": 1e3 * secs / b})
            print(f"# {name} SavedModel serving timed; {common.load()}", flush=True)
            del loaded, model
            gc.collect()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    teacher = next(r for r in rows if r["model"] == "teacher" and r["format"] == "tflite_fp32")
    tsm = next(r for r in rows if r["model"] == "teacher" and r["format"] == "saved_model")
    print()
    print(f"## LiteRT, {size}×{size} input, one image (median of {args.runs} runs)\n")
    print(common.table(
        ["model", "format", "size (kB)", "size ÷ teacher fp32", "ms, 1 thread", "ms, 2 threads",
         "latency ÷ teacher fp32 (1 thread)", "GFLOPs (fwd)"],
        [[r["model"], r["format"], f"{r['size_kb']:.0f}",
          f"{r['size_kb'] / (tsm['size_kb'] if r['format'] == 'saved_model' else teacher['size_kb']):.3f}",
          f"{r['ms_1']:.2f}" if "ms_1" in r else "–", f"{r['ms_2']:.2f}" if "ms_2" in r else "–",
          f"{r['ms_1'] / teacher['ms_1']:.3f}" if "ms_1" in r else "–", f"{r['flops'] / 1e9:.3f}"]
         for r in rows]))
    print(f"\n## SavedModel serving (tf.saved_model.load), ms per batch (median of {args.repeats} rounds)\n")
    print(common.table(["model", "signature", "batch", "ms / batch", "ms / image"],
                       [[s["model"], s["signature"], s["batch"], f"{s['ms_batch']:.2f}", f"{s['ms_image']:.2f}"]
                        for s in serving]))
    common.write_json(args.json, "export_latency", {"tflite": rows, "serving": serving})
    common.footer()
    small = [r for r in rows if r["model"] != "teacher" and "ms_1" in r]
    print("RATIO export_latency: LiteRT latency ÷ teacher fp32 (1 thread; size ratio): " + ", ".join(
        f"{r['model'].replace('student_', '')} {r['format'].replace('tflite_', '')} "
        f"{r['ms_1'] / teacher['ms_1']:.3f} ({r['size_kb'] / teacher['size_kb']:.3f})" for r in small))
    return rows


if __name__ == "__main__":
    main()
