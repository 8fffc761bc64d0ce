"""Student architectures side by side: ResNet-50/d against MobileFaceNet and MobileNetV3, in train-step time
and as int8 LiteRT files, each against what its FLOPs predict.

    python -m bench.archs [--sizes=48,112] [--widths=2,4,8] [--repeats=5] [--runs=30]

FLOPs are the usual way to size a student, and bench.scaling shows they stop predicting time for small
ResNets; depthwise convolutions, squeeze-excite and hard-swish (the mobile networks' building blocks) do
little arithmetic per byte and per op, so they may be further from it. Every network has the classification
head (the quick preset's class count) and freshly initialized weights.

    train step   the plain (labels-only) step as bench.common builds it, batch 32, fixed batch; all networks
                 of one input size in alternating rounds, median
    ∝ FLOPs      the teacher's (ResNet-50/1) measured step × the network's FLOPs ÷ the teacher's, as
                 bench.scaling defines it; measured ÷ that > 1 is time the FLOPs do not explain
    int8         export.saved_model (classify) → export.tflite.convert full int8, calibrated on random
                 images; LiteRT, 1 thread, serving_crop, one image (bench.export_latency.lite_latency);
                 its ∝ FLOPs is the teacher's int8 latency scaled the same way; the fp32 file's latency
                 beside it, since int8 is not faster for every network
"""
from __future__ import annotations

import gc
import os
import shutil
import tempfile
from typing import Dict, List, Sequence

import numpy as np

from bench import common
from bench.export_latency import lite_latency
from keras_kd.keras import keras
from keras_kd.models import archs, network

BATCH = 32
CLASSES = common.QUICK_CLASSES
NAMES = {"mobilefacenet": "MobileFaceNet", "mobilenet_v3_small": "MobileNetV3-Small",
         "mobilenet_v3_large": "MobileNetV3-Large"}


def networks(widths: Sequence[int]) -> List[dict]:
    """The teacher first (the FLOP reference), then ResNet-50/d, then the mobile networks at width 1.0."""
    nets = [{"arch": "resnet50", "divisor": d} for d in [1] + [w for w in widths if w != 1]]
    nets += [{"arch": a, "divisor": 1} for a in ("mobilefacenet", "mobilenet_v3_small", "mobilenet_v3_large")]
    for n in nets:
        n["tag"] = archs.student_tag(n["arch"], n["divisor"])
        n["name"] = (("ResNet-50 (teacher)" if n["divisor"] == 1 else f"ResNet-50/{n['divisor']}")
                     if n["arch"] == "resnet50" else NAMES.get(n["arch"], n["arch"]))
    return nets


def build(net: dict, size: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = archs.build_model(net["arch"], net["divisor"], size, CLASSES, name=f"net_{net['tag']}")
    # PReLU slopes of a trained network's kind (the reference implementations' initial 0.25): a fresh Keras
    # PReLU's are 0, and its int8 file, multiplying by an all-zero constant, measured 2.8 ms at 112 px
    # against 1.5-1.8 ms with non-zero slopes.
    for layer in model.layers:
        if isinstance(layer, keras.layers.PReLU):
            layer.set_weights([np.full_like(layer.get_weights()[0], 0.25)])
    return model


def train_steps(models: Dict[str, keras.Model], size: int, repeats: int) -> Dict[str, float]:
    """Seconds per plain train step of each model, alternating rounds; a fast step is called several times
    per round (as bench.scaling does) so each timed call lasts long enough to read."""
    x, y = common.random_batch(BATCH, size, CLASSES)
    fns = {}
    number = {}
    for tag, model in models.items():
        step = common.step_fn(common.distiller(1, size, CLASSES, "plain", student=model), x, y)
        number[tag] = max(1, min(5, int(2e9 // max(3 * network.count_flops(model) * BATCH, 1))))
        fns[tag] = (lambda step=step, n=number[tag]: [step() for _ in range(n)])
    secs = common.rounds(fns, repeats)
    return {tag: s / number[tag] for tag, s in secs.items()}


def lite(model: keras.Model, size: int, tmp: str, runs: int) -> dict:
    """Size and 1-thread latency of the model's full-int8 .tflite, converted as export does, and the fp32
    file's latency beside it (the reference int8 should beat)."""
    from export import saved_model, tflite
    out_dir = os.path.join(tmp, f"{model.name}_{size}")
    sm = os.path.join(out_dir, "saved_model", "1")
    saved_model.save(model, "classify", size, sm, signatures=(tflite.SIGNATURE,))
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32) for _ in range(8)]
    out = {}
    for kind in ("fp32", "int8"):
        path = os.path.join(out_dir, f"model_{kind}.tflite")
        with open(path, "wb") as f:
            f.write(tflite.convert(sm, kind, (lambda: ({"image": x} for x in images)) if kind == "int8" else None))
        out[f"{kind}_kb"] = os.path.getsize(path) / 1024
        out[f"{kind}_s"] = lite_latency(path, 1, runs)
    return out


def add_ratios(rows: List[dict]) -> List[dict]:
    """Fills each row's FLOP-proportional step time and latency from the teacher's row at the same size."""
    for r in rows:
        t = next(o for o in rows if o["size"] == r["size"] and o["arch"] == "resnet50" and o["divisor"] == 1)
        r["flop_ratio"] = r["flops"] / t["flops"]
        r["step_prop_s"] = t["step_s"] * r["flop_ratio"]
        r["step_vs_prop"] = r["step_s"] / r["step_prop_s"]
        if "int8_s" in r and "int8_s" in t:
            r["int8_prop_s"] = t["int8_s"] * r["flop_ratio"]
            r["int8_vs_prop"] = r["int8_s"] / r["int8_prop_s"]
    return rows


def report(rows: List[dict]) -> tuple:
    """(markdown table, RATIO line) of rows that went through add_ratios."""
    def opt(r, key, fmt):
        return fmt.format(r[key]) if key in r else "–"
    text = common.table(
        ["network", "input", "params (M)", "fwd MFLOP", "FLOPs ÷ teacher", f"train ms/step (batch {BATCH})",
         "step ÷ ∝FLOPs", "int8 kB", "int8 ms (1 thread)", "int8 ms ÷ ∝FLOPs", "fp32 ms (1 thread)"],
        [[r["name"], r["size"], f"{r['params'] / 1e6:.3f}", f"{r['flops'] / 1e6:.1f}", f"{r['flop_ratio']:.4f}",
          f"{1e3 * r['step_s']:.1f}", f"{r['step_vs_prop']:.2f}", opt(r, "int8_kb", "{:.0f}"),
          f"{1e3 * r['int8_s']:.2f}" if "int8_s" in r else "–", opt(r, "int8_vs_prop", "{:.2f}"),
          f"{1e3 * r['fp32_s']:.2f}" if "fp32_s" in r else "–"]
         for r in rows])
    students = [r for r in rows if not (r["arch"] == "resnet50" and r["divisor"] == 1)]
    line = ("RATIO archs: train step ÷ FLOP-proportional time (teacher's step × FLOP ratio): "
            + ", ".join(f"{r['tag']}@{r['size']} {r['step_vs_prop']:.2f}" for r in students)
            + "; int8 LiteRT latency (1 thread) ÷ FLOP-proportional: "
            + ", ".join(f"{r['tag']}@{r['size']} {r['int8_vs_prop']:.2f}" for r in students if "int8_vs_prop" in r))
    return text, line


def main(argv=None) -> list:
    p = common.parser(__doc__)
    p.add_argument("--sizes", default=f"{common.QUICK},112")
    p.add_argument("--widths", default="2,4,8", help="ResNet-50 width divisors besides the teacher's 1")
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds of train steps (median)")
    p.add_argument("--runs", type=int, default=30, help="LiteRT invocations per file (median, after 3 warm-up)")
    p.add_argument("--nolite", action="store_true", help="skip the TFLite exports and their latency")
    args = p.parse_args(argv)
    common.header("archs")
    nets = networks(common.ints(args.widths))
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-archs-")
    try:
        for size in common.ints(args.sizes):
            models = {n["tag"]: build(n, size) for n in nets}
            secs = train_steps(models, size, args.repeats)
            print(f"# {size}px train steps: " + ", ".join(f"{t} {1e3 * s:.1f} ms" for t, s in secs.items())
                  + f"; {common.load()}", flush=True)
            for n in nets:
                model = models[n["tag"]]
                row = {**n, "size": size, "batch": BATCH, "classes": CLASSES, "params": network.count_params(model),
                       "flops": network.count_flops(model), "step_s": secs[n["tag"]]}
                if not args.nolite:
                    row.update(lite(model, size, tmp, args.runs))
                    print(f"# {n['tag']} {size}px int8: {row['int8_kb']:.0f} kB, {1e3 * row['int8_s']:.2f} ms "
                          f"(1 thread; fp32 {1e3 * row['fp32_s']:.2f} ms); {common.load()}", flush=True)
                rows.append(row)
            del models
            keras.backend.clear_session()
            gc.collect()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    add_ratios(rows)
    text, line = report(rows)
    print()
    print(text)
    common.write_json(args.json, "archs", rows)
    common.footer()
    print(line)
    return rows


if __name__ == "__main__":
    main()
