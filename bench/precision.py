"""XLA (`jit_compile=True`) and mixed precision on/off: train-step speed and the metric after a short training.

    python -m bench.precision [--width=8] [--steps=150] [--repeats=5]

Mixed precision is `mixed_bfloat16` on CPU (this CPU has AVX512_BF16) and `mixed_float16` on a GPU (with
loss scaling). Four configurations, plus the fp32 baseline trained twice so that the run-to-run noise of
the metric is on the table too (the training input order is not deterministic):

    speed   train steps on a fixed batch through fit's train function, alternating rounds → time relative
            to fp32 without XLA; first call (trace + compile) timed apart. Steps: the /8 student's plain
            step at 48 px (quick preset, batch 32, 30 classes) and at 224 px (batch 16, 10,575 classes),
            and the /8 distillation step with the online ResNet-50 teacher at 48 px
    metric  the same student trained from the same initial weights for --steps steps with Distiller.fit on
            the quick preset's synthetic data (labels, Nesterov SGD lr 0.05), then top-1 on its test split,
            evaluated in float32 (the trained weights are float32 variables in every configuration)

A speed-up that breaks training shows as a metric outside the fp32 pair's spread.
"""
from __future__ import annotations

import gc
import time

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


def float32_outputs(model: keras.Model) -> keras.Model:
    """The model with every output cast to float32 (Keras' advice under mixed precision: losses in fp32)."""
    if model.dtype_policy.compute_dtype == "float32":
        return model
    out = {k: keras.layers.Activation("linear", dtype="float32", name=f"{k}_float32")(v)
           for k, v in model.output.items()}
    return keras.Model(model.input, out, name=model.name)


def build(width: int, size: int, classes: int, policy: str, jit: bool, init_weights, lr: float, online=False):
    keras.mixed_precision.set_global_policy(policy)
    try:
        student = float32_outputs(resnet.build_model(width, size, classes, name=f"student_d{width}"))
        if init_weights is not None:
            student.set_weights(init_weights)
        teacher = float32_outputs(resnet.build_model(1, size, classes, name="teacher")) if online else None
        cls = ScaledDistiller if policy == "mixed_float16" else Distiller
        d = cls(student, teacher, task_loss=common.ce, targets=[("soft", 1.0)] if online else ())
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
    p.add_argument("--no_paper", action="store_true", help="skip the 224 px speed case")
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

    # speed: per step kind, alternating rounds over the four configurations
    speed = []
    for case, width, size, batch, n_cls, online in (
            (f"/{args.width} plain {args.size}px", args.width, args.size, args.batch, classes, False),
            (f"/{args.width} plain {common.PAPER}px", args.width, common.PAPER, 16, common.PAPER_CLASSES, False),
            (f"/{args.width} online teacher {args.size}px", args.width, args.size, args.batch, classes, True)):
        if size == common.PAPER and args.no_paper:
            continue
        xs, ys = common.random_batch(batch, size, n_cls)
        fns, first = {}, {}
        for policy, jit, label in configs:
            keras.utils.set_random_seed(0)
            fn = common.step_fn(build(width, size, n_cls, policy, jit, None, 0.05, online), xs, ys)
            t0 = time.perf_counter()
            fn()
            first[label] = time.perf_counter() - t0
            fns[label] = fn
        secs = common.rounds(fns, args.repeats, 1 if online or size > 64 else 3, warmup=1)
        for _, _, label in configs:
            speed.append({"case": case, "config": label, "batch": batch, "step_s": secs[label],
                          "img_s": batch / secs[label], "speedup": secs[configs[0][2]] / secs[label],
                          "first_call_s": first[label]})
        print(f"# speed {case}: " + ", ".join(f"{k} {batch / v:.0f} img/s" for k, v in secs.items())
              + f"; {common.load()}", flush=True)
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

    print()
    print(f"## Speed ({'GPU' if gpu else 'CPU'}), relative to fp32 without XLA\n")
    print(common.table(["train step", "configuration", "batch", "step s", "images/s", "speed-up vs fp32",
                        "first call s (trace + compile)"],
                       [[r["case"], r["config"], r["batch"], r["step_s"], r["img_s"], f"{r['speedup']:.2f}",
                         f"{r['first_call_s']:.1f}"] for r in speed]))
    print(f"\n## Metric: /{args.width} student, {args.size} px, batch {args.batch}, {args.steps} steps from the same "
          "weights, top-1 on the test split (fp32 twice: its spread is the run-to-run noise)\n")
    print(common.table(["configuration", f"top-1 after {args.steps} steps", "last training loss"],
                       [[k, f"{v['top1']:.4f}", f"{v['loss']:.3f}"] for k, v in metrics.items()]))
    common.write_json(args.json, "precision", {"speed": speed, "metrics": metrics})
    common.footer()
    first_case = speed[0]["case"]
    print("RATIO precision: speed-up vs fp32 (" + first_case + "; top-1 after short training, fp32 twice "
          f"{metrics['fp32']['top1']:.3f}/{metrics['fp32 (again)']['top1']:.3f}): " + ", ".join(
              f"{r['config']} {r['speedup']:.2f} ({metrics[r['config']]['top1']:.3f})"
              for r in speed if r["case"] == first_case) + "; other steps: " + "; ".join(
              f"{r['case']} {r['config']} {r['speedup']:.2f}" for r in speed
              if r["case"] != first_case and r["config"] != "fp32"))
    return speed


if __name__ == "__main__":
    main()
