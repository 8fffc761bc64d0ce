"""Train step time with TensorFlow's Conv2D input gradient ÷ with keras-kd's (keras_kd/conv_grad.py).

    python -m bench.conv_grad [--sizes=32,48] [--widths=1,8] [--repeats=5] [--precision=bfloat16]

For each input size and network width: the same compiled Distiller twice, one train function traced with
TensorFlow's registered Conv2D gradient (Conv2DBackpropInput) and one with keras-kd's (forward
convolutions), both stepping through fit's own train function on a fixed batch, timed in alternating
rounds. /1 is the ResNet-50 teacher's own (label-only) training step; other widths are "Ours" students
distilled from it online. With --precision=bfloat16 the networks being trained compute in mixed bfloat16, as
`--teacher_precision` builds teachers (for /1: the teacher's own step in the precision it trains in). Also
printed: the largest difference between the two gradients of the first step relative to the largest gradient
(they should agree to the precision's rounding).
"""
from __future__ import annotations

import gc

import numpy as np

from bench import common
from keras_kd import conv_grad
from keras_kd.keras import keras, tf
from keras_kd.models import archs, resnet

BATCH = {32: 16, 48: 32, 224: 16}


def gradients(d, x, y) -> np.ndarray:
    """The student's gradients on (x, y) through a freshly traced function (the registry as it is now)."""
    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            out = d.student(x, training=True)
            loss = common.ce(y, out)
        return tape.gradient(loss, d.student.trainable_variables)
    return np.concatenate([g.numpy().ravel() for g in grad()])


def measure(width: int, size: int, batch: int, classes: int, repeats: int, teacher,
            precision: str = "float32") -> dict:
    x, y = common.random_batch(batch, size, classes)
    fns, grads = {}, {}
    for mode in ("tf", "keras_kd"):
        conv_grad.install("fast") if mode == "keras_kd" else conv_grad.uninstall()
        keras.utils.set_random_seed(0)
        student = None if precision == "float32" else archs.build_model(  # None: common.distiller's own
            "resnet50", width, size, classes, name=f"student_d{width}", compute=precision)
        d = common.distiller(width, size, classes, "plain" if width == 1 else "online", teacher, student=student)
        # Non-zero residual-branch scales, so that every convolution's input gradient is exercised.
        for v in d.student.weights:
            if v.name.endswith("gamma:0"):
                v.assign(np.random.default_rng(1).uniform(0.5, 1.5, v.shape))
        grads[mode] = gradients(d, x, y)
        fns[mode] = common.step_fn(d, x, y)
        fns[mode]()  # traced now, with this mode's gradient
    conv_grad.install()  # back to what training uses (common.header installed it)
    secs = common.rounds(fns, repeats, number=1)
    diff = float(np.abs(grads["tf"] - grads["keras_kd"]).max() / np.abs(grads["tf"]).max())
    return {"width": width, "size": size, "batch": batch, "precision": precision, "tf_s": secs["tf"],
            "keras_kd_s": secs["keras_kd"], "ratio": secs["tf"] / secs["keras_kd"], "max_rel_diff": diff}


def main(argv=None) -> list:
    p = common.parser(__doc__)
    p.add_argument("--sizes", default="32,48")
    p.add_argument("--widths", default="1,8")
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds per variant (median)")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                   help="what the networks being trained compute in")
    args = p.parse_args(argv)
    common.header("conv_grad")
    rows = []
    for size in common.ints(args.sizes):
        batch, classes = BATCH.get(size, 16), common.QUICK_CLASSES
        teacher = resnet.build_model(1, size, classes, name="teacher")
        for width in common.ints(args.widths):
            r = measure(width, size, batch, classes, args.repeats, teacher, args.precision)
            rows.append(r)
            print(f"# /{width} {size}px batch {batch}: TF gradient {r['tf_s']:.3f} s/step, keras-kd "
                  f"{r['keras_kd_s']:.3f} s/step; {common.load()}", flush=True)
            gc.collect()
        del teacher
        gc.collect()
    print()
    print(common.table(["network", "input", "batch", "TF input gradient (s/step)", "keras-kd (s/step)",
                        "TF ÷ keras-kd", "max gradient difference (rel.)"],
                       [[f"/{r['width']}", r["size"], r["batch"], r["tf_s"], r["keras_kd_s"], f"{r['ratio']:.2f}",
                         f"{r['max_rel_diff']:.1e}"] for r in rows]))
    common.write_json(args.json, "conv_grad", rows)
    common.footer()
    print(f"RATIO conv_grad: train step with TF's Conv2D input gradient ÷ with keras-kd's ({args.precision}): "
          + ", ".join(f"/{r['width']}@{r['size']} {r['ratio']:.2f}" for r in rows)
          + f" (gradients agree to {max(r['max_rel_diff'] for r in rows):.0e})")
    return rows


if __name__ == "__main__":
    main()
