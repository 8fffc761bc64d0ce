"""XLA (`jit_compile=True`) and mixed precision on/off: train-step speed and the metric after a short training.

    python -m bench.precision [--width=8] [--steps=150] [--repeats=5]

Mixed precision is `mixed_bfloat16` on CPU (this CPU has AVX512_BF16) and `mixed_float16` on a GPU (with
loss scaling). Four configurations, plus the fp32 baseline trained twice so that the run-to-run noise of
the metric is on the table too (the training input order is not deterministic):

    speed   the /d student's plain train step (quick preset: 48 px, batch 32, 30 classes) on a fixed batch,
            through fit's train function, alternating rounds → time relative to fp32 without XLA
    metric  the same student trained from the same initial weights for --steps steps with Distiller.fit on
            the quick preset's synthetic data (labels, Nesterov SGD lr 0.05), then top-1 on its test split,
            evaluated in float32 (the trained weights are float32 variables in every configuration)

A speed-up that breaks training shows as a metric outside the fp32 pair's spread.
"""
from __future__ import annotations

import gc

from bench import common
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.distill.distiller import Distiller
from keras_kd.keras import keras, tf
from keras_kd.models import resnet
from keras_kd.tasks import TASKS


class ScaledDistiller(Distiller):
    """Distiller with dynamic loss scaling, which float16 gradients need (compile wraps the optimizer)."""

    def train_step(self, data):
        images, y = data
        with tf.GradientTape() as tape:
            loss = self._loss(images, y, training=True)
            scaled = self.optimizer.get_scaled_loss(loss)
        variables = self.trained_variables
        grads = self.optimizer.get_unscaled_gradients(tape.gradient(scaled, variables))
        self.optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        return {name: m.result() for name, m in self.trackers.items()}


def build(width: int, size: int, classes: int, policy: str, jit: bool, init_weights, lr: float):
    keras.mixed_precision.set_global_policy(policy)
    try:
        student = resnet.build_model(width, size, classes, name=f"student_d{width}")
        student.set_weights(init_weights)
        cls = ScaledDistiller if policy == "mixed_float16" else Distiller
        d = cls(student, None, task_loss=common.ce)
        d.compile(keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=1e-4), jit_compile=jit)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return d


def main(argv=None) -> list:
    p = common.parser(__doc__)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--size", type=int, default=common.QUICK)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=150, help="training steps for the metric")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    common.header("precision")
    gpu = bool(tf.config.list_physical_devices("GPU"))
    mixed = "mixed_float16" if gpu else "mixed_bfloat16"
    configs = [("float32", False, "fp32"), ("float32", True, "fp32 + XLA"), (mixed, False, mixed),
               (mixed, True, f"{mixed} + XLA")]
    data_dir = common.synthetic_data()
    classes = common.QUICK_CLASSES
    keras.utils.set_random_seed(0)
    init = resnet.build_model(args.width, args.size, classes).get_weights()
    x, y = common.random_batch(args.batch, args.size, classes)

    # speed: alternating rounds over the four configurations
    fns = {}
    for policy, jit, label in configs:
        fns[label] = common.step_fn(build(args.width, args.size, classes, policy, jit, init, 0.05), x, y)
    secs = common.rounds(fns, args.repeats, 3, warmup=2)
    print("# speed measured; " + common.load(), flush=True)
    del fns
    gc.collect()

    # metric: short training of each from the same weights, fp32 twice (its spread is the noise)
    cfg = Config(image_size=args.size, batch_size=args.batch, seed=0, students=(args.width,))
    in_cfg = pipeline.InputConfig(image_size=args.size, batch_size=args.batch, seed=0)
    metrics = {}
    for policy, jit, label in configs + [("float32", False, "fp32 (again)")]:
        keras.utils.set_random_seed(0)
        d = build(args.width, args.size, classes, policy, jit, init, 0.05)
        ds = pipeline.make_dataset(data_dir, "train", in_cfg, training=True)
        h = d.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0).history
        fp32 = resnet.build_model(args.width, args.size, classes)
        fp32.set_weights(d.student.get_weights())
        m, _ = TASKS["classify"].evaluate(fp32, data_dir, cfg)
        metrics[label] = {"top1": m["top1"], "loss": h["loss"][-1]}
        print(f"# {label}: top-1 {m['top1']:.4f}, loss {h['loss'][-1]:.3f}; {common.load()}", flush=True)
        del d, fp32
        gc.collect()

    base = secs["fp32"]
    rows = [{"config": label, "step_s": secs[label], "img_s": args.batch / secs[label],
             "speedup": base / secs[label], **metrics[label]} for _, _, label in configs]
    rows.append({"config": "fp32 (again)", **metrics["fp32 (again)"]})
    print()
    print(common.table(
        ["configuration", "step s", "images/s", "speed-up vs fp32", f"top-1 after {args.steps} steps",
         "last loss"],
        [[r["config"], r.get("step_s", "–"), r.get("img_s", "–"),
          f"{r['speedup']:.2f}" if "speedup" in r else "–", f"{r['top1']:.4f}", f"{r['loss']:.3f}"] for r in rows]))
    print(f"\n/{args.width} student, {args.size} px, batch {args.batch}; {'GPU' if gpu else 'CPU'}")
    common.write_json(args.json, "precision", rows)
    common.footer()
    print("RATIO precision: speed-up vs fp32 (top-1 after short training; fp32 twice: "
          f"{metrics['fp32']['top1']:.3f}, {metrics['fp32 (again)']['top1']:.3f}): " + ", ".join(
              f"{r['config']} {r['speedup']:.2f} ({r['top1']:.3f})" for r in rows if "speedup" in r))
    return rows


if __name__ == "__main__":
    main()
