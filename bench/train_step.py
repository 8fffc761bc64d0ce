"""Train step images/s: plain student vs distillation with the online teacher vs with cached teacher outputs.

    python -m bench.train_step [--widths=2,4,8] [--sizes=48,224] [--repeats=5]

For each student width /d and input size: three Distillers compiled as the Runner compiles them (Nesterov
SGD, weight decay), all stepping through fit's own train function on a fixed batch (so the input pipeline
is out of the picture; bench.input_pipeline measures it):

    plain    labels only (the label-only student's stage)
    online   labels + soft targets from the frozen ResNet-50 teacher, run in every step ("Ours")
    cached   the same loss, the teacher's outputs given with the batch (--teacher_cache)

Ratios are step times relative to the plain step (1.00 = free distillation). Input 48 px: the quick
preset (batch 32, 30 classes). 224 px: the paper's input, with batch 16 instead of 256 (2 CPU cores) and
CASIA-WebFace's 10,575 classes.
"""
from __future__ import annotations

import gc

from bench import common
from keras_kd.keras import keras
from keras_kd.models import resnet

BATCH = {common.QUICK: 32, common.PAPER: 16}
CLASSES = {common.QUICK: common.QUICK_CLASSES, common.PAPER: common.PAPER_CLASSES}


def measure(width: int, size: int, batch: int, classes: int, repeats: int, number: int, teacher=None) -> dict:
    keras.utils.set_random_seed(0)
    teacher = teacher or resnet.build_model(1, size, classes, name="teacher")
    x, y = common.random_batch(batch, size, classes)
    kinds = {}
    for kind in ("plain", "online", "cached"):
        d = common.distiller(width, size, classes, kind, teacher)
        yy = common.with_teacher_outputs(teacher, x, y) if kind == "cached" else y
        kinds[kind] = common.step_fn(d, x, yy)
    secs = common.rounds(kinds, repeats, number)
    return {"width": width, "size": size, "batch": batch, "classes": classes,
            **{f"{k}_s": v for k, v in secs.items()},
            **{f"{k}_img_s": batch / v for k, v in secs.items()},
            "online_ratio": secs["online"] / secs["plain"], "cached_ratio": secs["cached"] / secs["plain"]}


def main(argv=None) -> list:
    p = common.parser(__doc__)
    p.add_argument("--widths", default="2,4,8")
    p.add_argument("--sizes", default=f"{common.QUICK},{common.PAPER}")
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds per variant (median)")
    p.add_argument("--batch", type=int, default=0, help="batch at every size (default: 32 at 48 px, 16 at 224)")
    args = p.parse_args(argv)
    common.header("train_step")
    rows = []
    for size in common.ints(args.sizes):
        classes = CLASSES.get(size, common.QUICK_CLASSES)
        batch = args.batch or BATCH.get(size, 16)
        teacher = resnet.build_model(1, size, classes, name="teacher")
        for width in common.ints(args.widths):
            number = 3 if size <= 64 else 1
            r = measure(width, size, batch, classes, args.repeats, number, teacher)
            rows.append(r)
            print(f"# /{width} {size}px batch {batch}: plain {r['plain_img_s']:.1f} img/s, online "
                  f"{r['online_img_s']:.1f}, cached {r['cached_img_s']:.1f}; {common.load()}", flush=True)
            gc.collect()
        del teacher
        gc.collect()
    print()
    print(common.table(
        ["student", "input", "batch", "classes", "plain img/s", "online img/s", "cached img/s",
         "online ÷ plain (time)", "cached ÷ plain (time)"],
        [[f"/{r['width']}", r["size"], r["batch"], r["classes"], r["plain_img_s"], r["online_img_s"],
          r["cached_img_s"], f"{r['online_ratio']:.2f}", f"{r['cached_ratio']:.2f}"] for r in rows]))
    common.write_json(args.json, "train_step", rows)
    common.footer()
    worst = max(r["cached_ratio"] for r in rows)
    print("RATIO train_step: distill step time ÷ plain student step: online "
          + ", ".join(f"/{r['width']}@{r['size']} {r['online_ratio']:.2f}" for r in rows)
          + "; cached " + ", ".join(f"/{r['width']}@{r['size']} {r['cached_ratio']:.2f}" for r in rows)
          + f" (worst cached {worst:.2f}; goal ≤ 1.15)")
    return rows


if __name__ == "__main__":
    main()
