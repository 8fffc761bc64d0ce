"""Achieved GFLOP/s of the train step (FLOPs counted from its graph) ÷ dense matmul GFLOP/s, same run.

    python -m bench.flops [--widths=1,2,8] [--sizes=48,224] [--repeats=5]

FLOPs are counted by TensorFlow's profiler (tf.compat.v1.profiler, float_operation) on the graph of a
concrete function at the benchmark's batch size: the forward pass alone (compared with
`network.count_flops`, the model's own count: 2 × multiply-adds of convolutions and dense layers) and the
whole train step (forward, Conv2DBackpropInput/Filter, MatMul gradients, the optimizer's element-wise
ops). The train step is timed as bench.train_step does (fit's train function on a fixed batch).

The hardware reference is the best of float32 `tf.matmul` of N×N matrices (N = 512, 1024, 2048) timed in
the same process: what this machine's BLAS (oneDNN) reaches on the most favourable dense op. Achieved ÷
that says how far the train step is from the hardware limit; small students at small inputs are far from
it (per-op overhead dominates), which is what bench.scaling shows in detail.
"""
from __future__ import annotations

import gc

from bench import common
from keras_kd.keras import keras, tf
from keras_kd.models import network, resnet


def graph_flops(concrete) -> int:
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(tf.compat.v1.profiler.profile(concrete.graph, options=opts).total_float_ops)


def matmul_gflops(repeats: int) -> dict:
    out = {}
    for n in (512, 1024, 2048):
        a = tf.random.normal([n, n])
        b = tf.random.normal([n, n])
        reps = max(1, int(2e9 // (2 * n ** 3)))  # ~2 GFLOP per call

        @tf.function
        def mm(a, b, reps=reps):
            acc = tf.zeros([n, n])
            for _ in tf.range(reps):
                acc += tf.matmul(a, b)
            return acc

        secs = common.rounds({"mm": lambda: mm(a, b).numpy()}, repeats)["mm"]
        out[n] = 2 * n ** 3 * reps / secs / 1e9
    return out


def train_step_flops(width: int, size: int, batch: int, classes: int, kind: str, teacher=None) -> dict:
    keras.utils.set_random_seed(0)
    d = common.distiller(width, size, classes, kind, teacher)
    x, y = common.random_batch(batch, size, classes)
    fwd = tf.function(lambda im: d.student(im, training=False)).get_concrete_function(
        tf.TensorSpec([batch, size, size, 3], tf.float32))
    step = tf.function(d.train_step).get_concrete_function(
        (tf.TensorSpec([batch, size, size, 3], tf.float32), {"label": tf.TensorSpec([batch], tf.int32)}))
    return {"d": d, "x": x, "y": y, "fwd_graph": graph_flops(fwd), "fwd_model": network.count_flops(d.student) * batch,
            "step_graph": graph_flops(step)}


def main(argv=None) -> list:
    p = common.parser(__doc__)
    p.add_argument("--widths", default="1,2,8")
    p.add_argument("--sizes", default=f"{common.QUICK},{common.PAPER}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--online", action="store_true", help="also the /d distillation step with the online teacher")
    args = p.parse_args(argv)
    common.header("flops")
    peak = matmul_gflops(args.repeats)
    best = max(peak.values())
    print("# dense matmul GFLOP/s: " + ", ".join(f"{n}×{n} {g:.1f}" for n, g in peak.items()), flush=True)
    rows = []
    for size in common.ints(args.sizes):
        batch = 32 if size <= 64 else 8
        classes = common.QUICK_CLASSES if size <= 64 else common.PAPER_CLASSES
        teacher = resnet.build_model(1, size, classes, name="teacher") if args.online else None
        for width in common.ints(args.widths):
            for kind in (["plain", "online"] if args.online and width > 1 else ["plain"]):
                r = train_step_flops(width, size, batch, classes, kind, teacher)
                secs = common.rounds({"step": common.step_fn(r["d"], r["x"], r["y"])}, args.repeats,
                                     3 if size <= 64 else 1)["step"]
                achieved = r["step_graph"] / secs / 1e9
                rows.append({"width": width, "size": size, "batch": batch, "kind": kind,
                             "fwd_graph_gflop": r["fwd_graph"] / 1e9, "fwd_model_gflop": r["fwd_model"] / 1e9,
                             "step_graph_gflop": r["step_graph"] / 1e9, "step_s": secs,
                             "achieved_gflops": achieved, "of_peak": achieved / best})
                print(f"# {'teacher' if width == 1 else f'/{width}'} {kind} {size}px: {achieved:.1f} GFLOP/s "
                      f"({achieved / best:.1%} of matmul); {common.load()}", flush=True)
                del r
                gc.collect()
    print()
    print(common.table(
        ["network", "step", "input", "batch", "fwd GFLOP (graph)", "fwd GFLOP (count_flops)", "step GFLOP (graph)",
         "step ÷ fwd", "step s", "achieved GFLOP/s", "÷ matmul GFLOP/s"],
        [["teacher" if r["width"] == 1 else f"/{r['width']}", r["kind"], r["size"], r["batch"],
          f"{r['fwd_graph_gflop']:.4g}", f"{r['fwd_model_gflop']:.4g}", f"{r['step_graph_gflop']:.4g}",
          f"{r['step_graph_gflop'] / r['fwd_graph_gflop']:.2f}", r["step_s"], r["achieved_gflops"],
          f"{r['of_peak']:.3f}"] for r in rows]))
    print(f"\nmatmul reference: {best:.1f} GFLOP/s (best of " + ", ".join(f"{n}²" for n in peak) + ")")
    common.write_json(args.json, "flops", {"matmul_gflops": peak, "rows": rows})
    common.footer()
    print("RATIO flops: achieved train-step GFLOP/s ÷ dense matmul GFLOP/s: " + ", ".join(
        f"{'teacher' if r['width'] == 1 else '/' + str(r['width'])}{'' if r['kind'] == 'plain' else ' ' + r['kind']}"
        f"@{r['size']} {r['of_peak']:.3f}" for r in rows))
    return rows


if __name__ == "__main__":
    main()
