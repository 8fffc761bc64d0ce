"""Cost growth: plain train-step time vs width divisor and vs input size, against the FLOP model.

    python -m bench.scaling [--widths=1,2,4,8,16] [--sizes=32,48,64,96,128,160,224] [--png=bench/scaling.png]

Two sweeps of the plain (labels-only) train step, batch 32, 30 classes: the width divisor at the quick
preset's 48 px, and the input size for the /8 student. The FLOP model is `network.count_flops` × batch × 3
(forward + the two backward convolutions; bench.flops measures the graph's ratio at ≈ 2.95). Two ways to
read it:

    ∝ FLOPs      predicted time proportional to FLOPs, scaled to the most expensive configuration of the
                 sweep; measured ÷ predicted > 1 is time the FLOPs do not explain
    a + F / b    least-squares fit over both sweeps: a fixed per-step cost a (ms) plus FLOPs at b GFLOP/s
"""
from __future__ import annotations

import gc
import os

import numpy as np

from bench import common
from keras_kd.models import network

CLASSES = common.QUICK_CLASSES


def step_time(width: int, size: int, batch: int, repeats: int) -> tuple:
    from keras_kd.keras import keras
    keras.utils.set_random_seed(0)
    d = common.distiller(width, size, CLASSES, "plain")
    x, y = common.random_batch(batch, size, CLASSES)
    flops = 3 * network.count_flops(d.student) * batch
    number = max(1, min(5, int(2e9 // max(flops, 1))))
    secs = common.rounds({"s": common.step_fn(d, x, y)}, repeats, number)["s"]
    return secs, flops


def main(argv=None) -> list:
    p = common.parser(__doc__)
    p.add_argument("--widths", default="1,2,4,8,16")
    p.add_argument("--sizes", default="32,48,64,96,128,160,224")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--png", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling.png"))
    args = p.parse_args(argv)
    common.header("scaling")
    rows = []
    for sweep, points in (("width", [(w, common.QUICK) for w in common.ints(args.widths)]),
                          ("size", [(8, s) for s in common.ints(args.sizes)])):
        for width, size in points:
            secs, flops = step_time(width, size, args.batch, args.repeats)
            rows.append({"sweep": sweep, "width": width, "size": size, "s": secs, "gflop": flops / 1e9})
            print(f"# /{width} {size}px: {1e3 * secs:.1f} ms/step, {flops / 1e9:.3f} GFLOP; {common.load()}",
                  flush=True)
            gc.collect()
    # a + F / b over every point
    A = np.array([[1.0, r["gflop"]] for r in rows])
    t = np.array([r["s"] for r in rows])
    (a, inv_b), *_ = np.linalg.lstsq(A, t, rcond=None)
    for sweep in ("width", "size"):
        pts = [r for r in rows if r["sweep"] == sweep]
        ref = max(pts, key=lambda r: r["gflop"])
        for r in pts:
            r["prop"] = ref["s"] * r["gflop"] / ref["gflop"]
            r["affine"] = a + inv_b * r["gflop"]
            r["gflops"] = r["gflop"] / r["s"]
    print()
    for sweep, title in (("width", f"width divisor at {common.QUICK} px"), ("size", "input size, /8 student")):
        print(f"## Step time vs {title} (batch {args.batch})\n")
        print(common.table(
            ["/d", "input", "GFLOP/step (model)", "ms/step", "achieved GFLOP/s", "time ∝ FLOPs (ms)",
             "measured ÷ ∝FLOPs", "a + F/b (ms)"],
            [[r["width"], r["size"], f"{r['gflop']:.3f}", f"{1e3 * r['s']:.1f}", f"{r['gflops']:.1f}",
              f"{1e3 * r['prop']:.1f}", f"{r['s'] / r['prop']:.2f}", f"{1e3 * r['affine']:.1f}"]
             for r in rows if r["sweep"] == sweep]))
        print()
    print(f"fit over both sweeps: a = {1e3 * a:.1f} ms per step + FLOPs at b = {1 / inv_b:.1f} GFLOP/s")
    if args.png:
        plot(rows, a, inv_b, args.png)
        print(f"plot: {args.png}")
    common.write_json(args.json, "scaling", {"rows": rows, "a_s": a, "b_gflops": 1 / inv_b})
    common.footer()
    w = [r for r in rows if r["sweep"] == "width"]
    s = [r for r in rows if r["sweep"] == "size"]
    print("RATIO scaling: measured ÷ FLOP-proportional time, by width: " + ", ".join(
        f"/{r['width']} {r['s'] / r['prop']:.2f}" for r in w) + "; by input size (/8): " + ", ".join(
        f"{r['size']}px {r['s'] / r['prop']:.2f}" for r in s) + f"; fixed cost {1e3 * a:.0f} ms/step")
    return rows


def plot(rows, a, inv_b, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, sweep, key, label in ((axes[0], "width", "width", "width divisor d (48 px)"),
                                  (axes[1], "size", "size", "input size (px), /8 student")):
        pts = [r for r in rows if r["sweep"] == sweep]
        x = [r[key] for r in pts]
        ax.plot(x, [1e3 * r["s"] for r in pts], "o-", label="measured")
        ax.plot(x, [1e3 * r["prop"] for r in pts], "--", label="∝ FLOPs (matched at the largest)")
        ax.plot(x, [1e3 * r["affine"] for r in pts], ":", label=f"{1e3 * a:.0f} ms + FLOPs / {1 / inv_b:.0f} GFLOP/s")
        ax.set(xscale="log", yscale="log", xlabel=label, ylabel="ms per train step (batch 32)")
        from matplotlib.ticker import NullFormatter
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x)
        ax.set_xticklabels([str(v) for v in x])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


if __name__ == "__main__":
    main()
