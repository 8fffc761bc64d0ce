"""Which way of writing an activation LiteRT runs fast in int8: PReLU and hard-swish, each written several
ways, in the same small network, beside ReLU; then the mobile students' int8 files as converted without and
with the exporter's rewrites, in alternating rounds.

    python -m bench.int8_ops [--size=112] [--runs=50] [--rounds=2]

The network: a stride-2 3×3 convolution to 48 channels, then 6 blocks of depthwise 3×3 → activation → 1×1
convolution (a MobileNet's pattern), the classification head. Each form is converted as export converts a
student (export.saved_model.save → export.tflite.convert, full int8 calibrated on 8 random images) and timed
with export's own latency (1 thread, the default XNNPACK delegate, median of --runs calls), fp32 beside it.
The converter fuses some forms into one op (PRELU, HARD_SWISH) that XNNPACK has no int8 kernel for: such an
op runs on the reference kernel, between delegated partitions. ``export`` marks the form the exporter writes
(export.int8_ops). Each form is checked against its reference in float before it is timed.
The students are bench.archs' (freshly built, PReLU slopes 0.25), converted by bench.archs.lite.

Last, a floor (``--floor_sizes``): MobileFaceNet's int8 file as exported, and again with every PReLU replaced by
ReLU (which the converter fuses into the convolution before it: what the activations would cost if they were
free), each against ResNet-50/4's, the ResNet student of similar size, in alternating rounds. It says how much
of MobileFaceNet's int8 time any way of writing its activation could remove.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
from typing import Callable, Dict

import numpy as np

from bench import archs, common
from bench.export_latency import lite_latency
from export import int8_ops as rewrites, saved_model, tflite
from keras_kd.keras import keras, tf

CHANNELS, BLOCKS, SLOPE = 48, 6, 0.25  # SLOPE: PReLU's, the reference implementations' initial value


def _prelu_lin(x, a):
    return a * x + (1.0 - a) * tf.nn.relu(x)


def _prelu_neg(x, a):
    return tf.nn.relu(x) - a * tf.nn.relu(-x)


def _hswish(x):  # keras.applications' form
    return x * (tf.nn.relu6(x + 3.0) * (1.0 / 6.0))


def _hswish_exact(x):  # bit-equal to _hswish
    return x * tf.minimum(tf.nn.relu(x + 3.0) * (1.0 / 6.0), 1.0)


def _hswish_export(x):  # export.int8_ops.HardSwish
    return x * tf.minimum(tf.nn.relu(x * (1.0 / 6.0) + 0.5), 1.0)


class Slope(keras.layers.Layer):
    """A per-channel PReLU written as ``fn(x, α)``."""

    def __init__(self, fn: Callable, **kw):
        super().__init__(**kw)
        self.fn = fn

    def build(self, shape):
        self.alpha = self.add_weight(name="alpha", shape=(1, 1, shape[-1]),
                                     initializer=keras.initializers.Constant(SLOPE))

    def call(self, x):
        return self.fn(x, self.alpha)


class KerasPReLU(keras.layers.PReLU):
    """keras.layers.PReLU's own math (the converter writes PRELU); a subclass, which the export leaves as it is."""


# form: (layer factory, its name in the table, what it must equal, whether export writes it)
FORMS: Dict[str, tuple] = {
    "relu": (lambda: keras.layers.ReLU(), "ReLU (the reference)", None, False),
    "prelu": (lambda: KerasPReLU(keras.initializers.Constant(SLOPE), shared_axes=[1, 2]),
              "PReLU (Keras)", None, False),
    "prelu_max": (lambda: rewrites.MaxPReLU(keras.initializers.Constant(SLOPE), shared_axes=[1, 2]),
                  "max(x, α·x)", "prelu", True),
    "prelu_lin": (lambda: Slope(_prelu_lin), "α·x + (1 − α)·relu(x)", "prelu", False),
    "prelu_neg": (lambda: Slope(_prelu_neg), "relu(x) − α·relu(−x)", "prelu", False),
    "hswish": (lambda: keras.layers.Lambda(_hswish), "x·relu6(x + 3)/6 (keras.applications)", None, False),
    "hswish_exact": (lambda: keras.layers.Lambda(_hswish_exact), "x·min(relu(x + 3)/6, 1)", "hswish", False),
    "hswish_export": (lambda: keras.layers.Lambda(_hswish_export), "x·min(relu(x/6 + 1/2), 1)", "hswish", True),
}


def build(form: str, size: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    images = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(CHANNELS, 3, 2, padding="same")(images)
    for _ in range(BLOCKS):
        x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
        x = FORMS[form][0]()(x)
        x = keras.layers.Conv2D(CHANNELS, 1)(x)
    hidden = keras.layers.GlobalAveragePooling2D(name="hidden")(x)
    logits = keras.layers.Dense(common.QUICK_CLASSES, name="logits")(hidden)
    return keras.Model(images, {"logits": logits, "hidden": hidden, "hint": x}, name=f"net_{form}")


def ops(path: str) -> Dict[str, int]:
    from ai_edge_litert.interpreter import Interpreter
    counts: Dict[str, int] = {}
    for op in Interpreter(model_path=path)._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts


def measure(form: str, size: int, runs: int, tmp: str, x: np.ndarray) -> dict:
    model = build(form, size)
    ref = FORMS[form][2]
    if ref:  # the same function as its reference, in float (same seed: the same weights)
        np.testing.assert_allclose(model(x)["logits"].numpy(), build(ref, size)(x)["logits"].numpy(), rtol=1e-4,
                                   atol=1e-5)
    sm = os.path.join(tmp, form)
    saved_model.save(model, "classify", size, sm, signatures=(tflite.SIGNATURE,))
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32) for _ in range(8)]
    row = {"form": form, "name": FORMS[form][1], "export": FORMS[form][3], "size": size}
    for kind in ("fp32", "int8"):
        path = os.path.join(tmp, f"{form}_{kind}.tflite")
        with open(path, "wb") as f:
            f.write(tflite.convert(sm, kind, (lambda: ({"image": i} for i in images)) if kind == "int8" else None))
        row[f"{kind}_s"] = lite_latency(path, 1, runs)
    skip = {"CONV_2D", "DEPTHWISE_CONV_2D", "QUANTIZE", "DEQUANTIZE", "MEAN", "FULLY_CONNECTED", "ARG_MAX", "SOFTMAX"}
    row["int8_ops"] = {k: v for k, v in ops(os.path.join(tmp, f"{form}_int8.tflite")).items() if k not in skip}
    return row


@contextlib.contextmanager
def without_rewrites():
    """export as it was before export.int8_ops: the network traced as it is."""
    rewrite = rewrites.rewrite
    rewrites.rewrite = lambda model, hard_swish=True: model
    try:
        yield
    finally:
        rewrites.rewrite = rewrite


def students(size: int, runs: int, rounds: int, tmp: str) -> list:
    """Median int8 and fp32 seconds of each mobile student's files without ("before") and with the rewrites."""
    nets = [n for n in archs.networks([]) if n["arch"] != "resnet50"]
    times = {(n["tag"], mode): {"int8_s": [], "fp32_s": []} for n in nets for mode in ("before", "after")}
    for r in range(rounds):
        for net in nets:
            for mode in ("before", "after"):
                model = archs.build(net, size)
                model._name = f"{net['tag']}_{mode}_{r}"
                with without_rewrites() if mode == "before" else contextlib.nullcontext():
                    got = archs.lite(model, size, tmp, runs)
                for k in ("int8_s", "fp32_s"):
                    times[(net["tag"], mode)][k].append(got[k])
                print(f"# {net['tag']} {mode}: int8 {1e3 * got['int8_s']:.3f} ms; {common.load()}", flush=True)
    return [{"net": n["name"], "tag": n["tag"], "size": size, "rounds": rounds,
             **{f"{mode}_{k}": statistics.median(times[(n["tag"], mode)][k]) for mode in ("before", "after")
                for k in ("int8_s", "fp32_s")}} for n in nets]


def with_relu(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with the same weights whose PReLU layers are ReLU (for timing, not for serving)."""
    def clone(layer):
        if isinstance(layer, keras.layers.PReLU):
            return keras.layers.ReLU(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    copy._name = model.name + "_relu"
    return copy


def floor(size: int, runs: int, rounds: int, tmp: str) -> list:
    """Median int8 seconds of ResNet-50/4, MobileFaceNet as exported and MobileFaceNet with ReLU, alternating."""
    nets = {n["tag"]: n for n in archs.networks([4]) if n["tag"] in ("d4", "mbf")}
    times: Dict[str, list] = {"d4": [], "mbf": [], "mbf_relu": []}
    for r in range(rounds):
        for key in times:
            model = archs.build(nets[key.split("_")[0]], size)
            model._name = f"floor_{key}_{r}"
            times[key].append(archs.lite(with_relu(model) if key == "mbf_relu" else model, size, tmp, runs)["int8_s"])
            print(f"# floor {key}@{size}: int8 {1e3 * times[key][-1]:.3f} ms; {common.load()}", flush=True)
    names = {"d4": "ResNet-50/4", "mbf": "MobileFaceNet (as exported)", "mbf_relu": "MobileFaceNet, PReLU → ReLU"}
    return [{"key": k, "net": names[k], "size": size, "rounds": rounds, "int8_s": statistics.median(v)}
            for k, v in times.items()]


def floor_report(rows) -> tuple:
    ref = {r["size"]: r["int8_s"] for r in rows if r["key"] == "d4"}
    lines = [[r["net"], r["size"], f"{1e3 * r['int8_s']:.3f}", f"{r['int8_s'] / ref[r['size']]:.2f}"] for r in rows]
    text = common.table(["network", "input", "int8 ms (1 thread)", "÷ ResNet-50/4's"], lines)
    line = "RATIO int8_ops floor: int8 latency ÷ ResNet-50/4's: " + ", ".join(
        f"{r['key']}@{r['size']} {r['int8_s'] / ref[r['size']]:.2f}" for r in rows if r["key"] != "d4")
    return text, line


def students_report(rows) -> tuple:
    lines = [[r["net"], r["size"], f"{1e3 * r['before_int8_s']:.3f}", f"{1e3 * r['after_int8_s']:.3f}",
              f"{r['before_int8_s'] / r['after_int8_s']:.1f}", f"{1e3 * r['after_fp32_s']:.3f}"] for r in rows]
    text = common.table(["network", "input", "int8 ms before", "int8 ms with the rewrites", "speed-up",
                         "fp32 ms"], lines)
    line = "RATIO int8_ops students: int8 latency before ÷ with the rewrites: " + ", ".join(
        f"{r['tag']}@{r['size']} {r['before_int8_s'] / r['after_int8_s']:.1f}" for r in rows)
    return text, line


def report(rows) -> tuple:
    relu = next(r["int8_s"] for r in rows if r["form"] == "relu")
    lines = [[r["name"] + (" **export**" if r["export"] else ""), f"{1e3 * r['int8_s']:.3f}",
              f"{r['int8_s'] / relu:.2f}", f"{1e3 * r['fp32_s']:.3f}",
              ", ".join(f"{k} {v}" for k, v in sorted(r["int8_ops"].items())) or "–"] for r in rows]
    text = common.table(["form", "int8 ms (1 thread)", "int8 ÷ ReLU's", "fp32 ms", "int8 file's other ops"], lines)
    line = "RATIO int8_ops: int8 latency ÷ the ReLU network's: " + ", ".join(
        f"{r['form']} {r['int8_s'] / relu:.2f}" for r in rows)
    return text, line


def main(argv=None) -> list:
    p = common.parser(__doc__)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--runs", type=int, default=50, help="LiteRT invocations per file (median, after 3 warm-up)")
    p.add_argument("--forms", default=",".join(FORMS))
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the students and the floor (0: none)")
    p.add_argument("--floor_sizes", default="48,112", help="input sizes of the floor ('': none)")
    args = p.parse_args(argv)
    common.header("int8_ops")
    x = np.random.default_rng(1).uniform(0, 1, (4, args.size, args.size, 3)).astype(np.float32)
    tmp = tempfile.mkdtemp(prefix="bench-int8-ops-")
    rows = []
    try:
        for form in args.forms.split(","):
            rows.append(measure(form, args.size, args.runs, tmp, x))
            r = rows[-1]
            print(f"# {form}: int8 {1e3 * r['int8_s']:.3f} ms, fp32 {1e3 * r['fp32_s']:.3f} ms; {common.load()}",
                  flush=True)
        nets = students(args.size, args.runs, args.rounds, tmp) if args.rounds > 0 else []
        floors = [row for size in args.floor_sizes.split(",") if size and args.rounds > 0
                  for row in floor(int(size), args.runs, args.rounds, tmp)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text, line = report(rows)
    print()
    print(text)
    lines = [line]
    if nets:
        text, line = students_report(nets)
        print()
        print(text)
        lines.append(line)
    if floors:
        text, line = floor_report(floors)
        print()
        print(text)
        lines.append(line)
    common.write_json(args.json, "int8_ops", {"forms": rows, "students": nets, "floor": floors})
    common.footer()
    print("\n".join(lines))
    return rows + nets + floors


if __name__ == "__main__":
    main()
