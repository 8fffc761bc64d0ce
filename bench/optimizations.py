"""Before/after of each optimization tried on what the other benchmarks showed, measured in one run.

    python -m bench.optimizations [--only=cache,fold,xla,spe,onednn] [--repeats=5]

The /8 student at the quick preset's 48 px, batch 32 (the default run's configuration) unless said:

    cache    the distillation step with the online teacher → with cached teacher outputs (--teacher_cache)
    fold     the online teacher's forward pass (inference) → the same network with every BN folded into the
             convolution before it (fewer ops; TensorFlow's graph optimizer already fuses Conv+BN+ReLU on
             CPU, so this checks whether folding by hand adds anything)
    xla      the cached distillation step without → with XLA (compile(jit_compile=True)), at 48 and 224 px; the compile
             time and the number of steps after which it has paid for itself
    spe      `fit` over the real input pipeline (cached teacher outputs), steps_per_execution 1 → 8
    onednn   TF_ENABLE_ONEDNN_OPTS=1 (TensorFlow's default on x86) → 0, each in its own process (it is read
             at import): the /8 plain step, the teacher's training step and forward pass at 48 px
"""
from __future__ import annotations

import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from bench import common
from keras_kd.data import pipeline
from keras_kd.keras import keras, tf
from keras_kd.models import resnet

ALL = ("cache", "fold", "xla", "spe", "onednn")
SIZE, BATCH, CLASSES = common.QUICK, 32, common.QUICK_CLASSES


# ---- BN folding (kept here: it did not help, see RESULTS.md) ---------------------------------------------
def fold_batchnorm(model: keras.Model) -> keras.Model:
    """The model with each BN that follows a bias-free Conv2D (its only consumer) folded into it:
    W' = W·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε). Inference only; other BNs (the input BN) stay."""
    consumers = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            inbound = node.inbound_layers if isinstance(node.inbound_layers, list) else [node.inbound_layers]
            for src in inbound:
                consumers.setdefault(src.name, set()).add(layer.name)
    pairs = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and len(layer._inbound_nodes) == 1:
            src = layer._inbound_nodes[0].inbound_layers
            src = src[0] if isinstance(src, list) and len(src) == 1 else src
            if type(src) is keras.layers.Conv2D and not src.use_bias and consumers.get(src.name) == {layer.name}:
                pairs[layer.name] = src.name
    config = copy.deepcopy(model.get_config())
    config["layers"] = [l for l in config["layers"] if l["name"] not in pairs]
    for l in config["layers"]:
        if l["name"] in pairs.values():
            l["config"]["use_bias"] = True
        for node in l["inbound_nodes"]:
            for inbound in node:
                inbound[0] = pairs.get(inbound[0], inbound[0])

    def fix(spec):
        if isinstance(spec, dict):
            return {k: fix(v) for k, v in spec.items()}
        if isinstance(spec, list) and spec and isinstance(spec[0], str):
            return [pairs.get(spec[0], spec[0])] + spec[1:]
        return [fix(s) for s in spec] if isinstance(spec, list) else spec

    config["output_layers"] = fix(config["output_layers"])
    folded = keras.Model.from_config(config)
    conv_to_bn = {c: b for b, c in pairs.items()}
    for layer in folded.layers:
        src = model.get_layer(layer.name)
        if layer.name in conv_to_bn:
            bn = model.get_layer(conv_to_bn[layer.name])
            gamma, beta, mean, var = bn.get_weights()
            scale = gamma / np.sqrt(var + bn.epsilon)
            layer.set_weights([src.get_weights()[0] * scale, beta - mean * scale])
        elif layer.weights:
            layer.set_weights(src.get_weights())
    return folded


def _teacher(size=SIZE, classes=CLASSES):
    keras.utils.set_random_seed(0)
    t = resnet.build_model(1, size, classes, name="teacher")
    rng = np.random.default_rng(0)
    for layer in t.layers:  # trained-looking BN statistics, so that folding has something to fold
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape).astype("f4"), rng.normal(0, .1, b.shape).astype("f4"),
                               rng.normal(0, .1, m.shape).astype("f4"), rng.uniform(0.5, 2, v.shape).astype("f4")])
    return t


# ---- the items -------------------------------------------------------------------------------------------
def item_cache(repeats):
    t = _teacher()
    x, y = common.random_batch(BATCH, SIZE, CLASSES)
    secs = common.rounds({
        "online": common.step_fn(common.distiller(8, SIZE, CLASSES, "online", t), x, y),
        "cached": common.step_fn(common.distiller(8, SIZE, CLASSES, "cached", t), x,
                                 common.with_teacher_outputs(t, x, y)),
        "plain": common.step_fn(common.distiller(8, SIZE, CLASSES, "plain"), x, y)}, repeats, 3)
    return [{"item": "teacher cache", "what": "/8 distill step, 48 px", "before": "online teacher",
             "after": "cached outputs", "before_s": secs["online"], "after_s": secs["cached"],
             "note": f"plain student step {1e3 * secs['plain']:.1f} ms: cached ÷ plain "
                     f"{secs['cached'] / secs['plain']:.2f}"}]


def item_fold(repeats):
    t = _teacher()
    f = fold_batchnorm(t)
    x, _ = common.random_batch(BATCH, SIZE, CLASSES)
    a, b = t(x, training=False), f(x, training=False)
    diff = max(float(tf.reduce_max(tf.abs(a[k] - b[k]))) for k in a)
    fa = tf.function(lambda x: t(x, training=False)["logits"])
    fb = tf.function(lambda x: f(x, training=False)["logits"])
    secs = common.rounds({"bn": lambda: fa(x).numpy(), "folded": lambda: fb(x).numpy()}, repeats, 2)
    return [{"item": "BN folded into convs", "what": "teacher forward, 48 px, batch 32",
             "before": f"{len(t.layers)} layers", "after": f"{len(f.layers)} layers", "before_s": secs["bn"],
             "after_s": secs["folded"], "note": f"outputs equal to {diff:.1e}"}]


def item_xla(repeats):
    rows = []
    for size, batch, classes in ((SIZE, BATCH, CLASSES), (common.PAPER, 16, common.PAPER_CLASSES)):
        t = resnet.build_model(1, size, classes, name="teacher")
        x, y = common.random_batch(batch, size, classes)
        yy = common.with_teacher_outputs(t, x, y)
        fns, first = {}, {}
        for label, jit in (("off", False), ("on", True)):
            fn = common.step_fn(common.distiller(8, size, classes, "cached", t, jit_compile=jit), x, yy)
            t0 = time.perf_counter()
            fn()
            first[label] = time.perf_counter() - t0
            fns[label] = fn
        secs = common.rounds(fns, repeats, 3 if size <= 64 else 1)
        saved = secs["off"] - secs["on"]
        extra = first["on"] - first["off"]
        breakeven = f"pays off after {extra / saved:.0f} steps" if saved > 0 else "never pays off"
        rows.append({"item": "XLA (jit_compile=True)", "what": f"/8 cached distill step, {size} px, batch {batch}",
                     "before": "off", "after": "on", "before_s": secs["off"], "after_s": secs["on"],
                     "note": f"first call {first['off']:.1f} s → {first['on']:.1f} s; {breakeven}"})
        del t, fns
        gc.collect()
    return rows


def item_spe(repeats, steps=60):
    data_dir = common.synthetic_data()
    t = resnet.build_model(1, SIZE, CLASSES, name="teacher")
    from keras_kd.distill import teacher_cache
    key = {"bench": True}
    cache = teacher_cache.compute(t, data_dir, pipeline.InputConfig(image_size=SIZE, batch_size=BATCH), key)
    cfg = pipeline.InputConfig(image_size=SIZE, batch_size=BATCH)
    fits = {}
    for spe in (1, 8):
        d = common.distiller(8, SIZE, CLASSES, "cached", t, steps_per_execution=spe)
        ds = pipeline.make_dataset(data_dir, "train", cfg, training=True, teacher_outputs=cache)
        d.fit(ds, epochs=1, steps_per_epoch=16, verbose=0)  # traced, cache filled

        def run(d=d, ds=ds):
            d.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
        fits[spe] = run
    secs = common.rounds({str(k): v for k, v in fits.items()}, repeats, 1, warmup=0)
    return [{"item": "steps_per_execution", "what": f"fit, {steps} steps over the pipeline, /8 cached, 48 px",
             "before": "1", "after": "8", "before_s": secs["1"] / steps, "after_s": secs["8"] / steps, "note": ""}]


ONEDNN_CHILD = """
import json, sys
from bench import common
from keras_kd.keras import keras, tf
from keras_kd.models import resnet
out = {}
keras.utils.set_random_seed(0)
x, y = common.random_batch(32, 48, 30)
for name, width in (("/8 plain step", 8), ("teacher training step", 1)):
    out[name] = common.rounds({"s": common.step_fn(common.distiller(width, 48, 30, "plain"), x, y)}, int(sys.argv[1]), 2)["s"]
t = resnet.build_model(1, 48, 30)
f = tf.function(lambda x: t(x, training=False)["logits"])
out["teacher forward"] = common.rounds({"s": lambda: f(x).numpy()}, int(sys.argv[1]), 2)["s"]
print("RESULT " + json.dumps(out))
"""


def item_onednn(repeats):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    times = {"1": [], "0": []}
    for _ in range(2):  # processes alternate: 1, 0, 1, 0
        for flag in ("1", "0"):
            env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag, TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
            proc = subprocess.run([sys.executable, "-c", ONEDNN_CHILD, str(max(2, repeats // 2))], cwd=root,
                                  env=env, capture_output=True, text=True, timeout=1200)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                raise RuntimeError(proc.stderr[-2000:])
            times[flag].append(json.loads(line[0][len("RESULT "):]))
    rows = []
    for name in times["1"][0]:
        before = statistics.median(r[name] for r in times["1"])
        after = statistics.median(r[name] for r in times["0"])
        rows.append({"item": "oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)", "what": f"{name}, 48 px, batch 32",
                     "before": "on", "after": "off", "before_s": before, "after_s": after,
                     "note": "2 processes each, alternating"})
    return rows


def main(argv=None) -> list:
    p = common.parser(__doc__)
    p.add_argument("--only", default=",".join(ALL))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    common.header("optimizations")
    items = {"cache": item_cache, "fold": item_fold, "xla": item_xla, "spe": item_spe, "onednn": item_onednn}
    rows = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        new = items[name](args.repeats)
        for r in new:
            r["speedup"] = r["before_s"] / r["after_s"]
            print(f"# {r['item']}: {r['what']}: {1e3 * r['before_s']:.1f} → {1e3 * r['after_s']:.1f} ms "
                  f"({r['speedup']:.2f}×); {common.load()}", flush=True)
        rows += new
        gc.collect()
    print()
    print(common.table(["optimization", "measured on", "before", "after", "ms before", "ms after",
                        "speed-up (before ÷ after)", "note"],
                       [[r["item"], r["what"], r["before"], r["after"], f"{1e3 * r['before_s']:.1f}",
                         f"{1e3 * r['after_s']:.1f}", f"{r['speedup']:.2f}", r["note"]] for r in rows]))
    common.write_json(args.json, "optimizations", rows)
    common.footer()
    print("RATIO optimizations: before ÷ after: " + "; ".join(
        f"{r['item']} ({r['what']}) {r['speedup']:.2f}" for r in rows))
    return rows


if __name__ == "__main__":
    main()
