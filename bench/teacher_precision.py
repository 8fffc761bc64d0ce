"""The teacher in mixed bfloat16 (--teacher_precision, keras_kd/models/precision.py) ÷ in float32.

    python -m bench.teacher_precision [--size=48] [--batch=32] [--repeats=7] [--blocks=1,1,1,1]

The same ResNet-50 teacher weights built twice, float32 and mixed bfloat16 (float32 variables and outputs),
timed in alternating rounds on a fixed batch: its forward pass in inference (what every distillation step
and every evaluation pays), its own label-trained step, and the /8 student's "Ours" step with it online
(student float32 in both). Also printed: the largest difference of the teacher's logits and K between the
two, relative to their largest value. --blocks makes every network a shallower ResNet (a quick check of the
benchmark itself, not a measurement). With --teacher_precision=auto, keras-kd takes bfloat16 where the CPU
has AMX (the header's CPU line says which CPU this is).
"""
from __future__ import annotations

import gc
import time
from typing import Dict, List, Tuple

import numpy as np

from bench import common
from keras_kd import cpu
from keras_kd.keras import keras, tf
from keras_kd.models import archs


def main(argv=None) -> Tuple[List[dict], Dict[str, float]]:
    p = common.parser(__doc__)
    p.add_argument("--size", type=int, default=common.QUICK)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7, help="alternating rounds per variant (median)")
    p.add_argument("--blocks", default="", help="residual blocks per stage (default ResNet-50's 3,4,6,3)")
    args = p.parse_args(argv)
    blocks = tuple(common.ints(args.blocks)) if args.blocks else ()
    common.header("teacher_precision")
    print("# CPU flags: " + ", ".join(f"{f} {cpu.has(f)}" for f in ("amx_bf16", "avx512_bf16", "avx512f")),
          flush=True)
    size, batch, classes = args.size, args.batch, common.QUICK_CLASSES
    x, y = common.random_batch(batch, size, classes)
    keras.utils.set_random_seed(0)

    def build(width, compute="float32"):
        return archs.build_model("resnet50", width, size, classes, name="teacher" if width == 1 else "student",
                                 compute=compute, blocks=blocks)

    weights = build(1).get_weights()
    teachers, cases = {}, {}
    for compute in ("float32", "bfloat16"):
        t = build(1, compute)
        t.set_weights(weights)
        teachers[compute] = t
        forward = tf.function(lambda images, t=t: t(images, training=False))
        cases.setdefault("teacher forward (inference)", {})[compute] = (
            lambda f=forward: float(tf.reduce_sum(f(x)["logits"])))
        plain = build(1, compute)
        plain.set_weights(weights)
        cases.setdefault("teacher train step", {})[compute] = common.step_fn(
            common.distiller(1, size, classes, "plain", student=plain), x, y)
        cases.setdefault("/8 \"Ours\" step, teacher online", {})[compute] = common.step_fn(
            common.distiller(8, size, classes, "online", t, student=build(8)), x, y)
    out32, out16 = (teachers[c](x, training=False) for c in ("float32", "bfloat16"))
    diff = {k: float(np.abs(out16[k] - out32[k]).max() / np.abs(out32[k]).max()) for k in ("logits", "hidden")}
    rows = []
    for case, fns in cases.items():
        t0 = time.perf_counter()
        secs = common.rounds(fns, args.repeats, number=1, warmup=2)
        rows.append(row(case, size, batch, secs))
        print(f"# {case}: float32 {secs['float32'] * 1e3:.1f} ms, bfloat16 {secs['bfloat16'] * 1e3:.1f} ms "
              f"({time.perf_counter() - t0:.0f} s); {common.load()}", flush=True)
        gc.collect()
    text, line = report(rows, diff)
    print()
    print(text)
    common.write_json(args.json, "teacher_precision", {"rows": rows, "max_rel_diff": diff})
    common.footer()
    print(line)
    return rows, diff


def row(case: str, size: int, batch: int, secs: Dict[str, float]) -> dict:
    """One case's figures: seconds per call in each precision and bfloat16's ÷ float32's."""
    return {"case": case, "size": size, "batch": batch, "float32_s": secs["float32"],
            "bfloat16_s": secs["bfloat16"], "ratio": secs["bfloat16"] / secs["float32"]}


def report(rows: List[dict], diff: Dict[str, float]) -> Tuple[str, str]:
    """(the table and the outputs' difference, the RATIO line)."""
    text = common.table(["step", "input", "batch", "teacher float32 (s)", "teacher bfloat16 (s)",
                         "bfloat16 ÷ float32"],
                        [[r["case"], r["size"], r["batch"], r["float32_s"], r["bfloat16_s"], f"{r['ratio']:.2f}"]
                         for r in rows])
    text += (f"\n\nlargest difference of the teacher's outputs, bfloat16 against float32 (relative to the "
             f"largest value): logits {diff['logits']:.1e}, K {diff['hidden']:.1e}")
    line = ("RATIO teacher_precision: time with the teacher in bfloat16 ÷ in float32: "
            + ", ".join(f"{r['case']} {r['ratio']:.2f}" for r in rows)
            + f" (logits differ by {diff['logits']:.0e} of their largest)")
    return text, line


if __name__ == "__main__":
    main()
