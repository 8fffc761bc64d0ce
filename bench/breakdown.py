"""Where a train step's time goes: its parts timed alone, in alternating rounds (a poor man's profile).

    python -m bench.breakdown [--width=8] [--size=48] [--batch=32]

TensorBoard's profiler needs tensorboard-plugin-profile to read its traces and pyinstrument is not
installed here, so the step is taken apart instead, each part a tf.function of its own:

    student forward, inference      the student alone, BN in inference mode
    student forward, training       BN with batch statistics (what a train step runs)
    student forward + backward      the loss's gradients (Distiller._loss under a GradientTape)
    optimizer update                Nesterov SGD with weight decay applied to given gradients
    teacher forward (inference)     what an online-teacher step adds (the cache removes it)
    plain train step / online distill step    fit's own train function, for reference
"""
from __future__ import annotations

from bench import common
from keras_kd.keras import keras, tf
from keras_kd.models import resnet


def main(argv=None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--size", type=int, default=common.QUICK)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    common.header("breakdown")
    classes = common.QUICK_CLASSES if args.size <= 64 else common.PAPER_CLASSES
    keras.utils.set_random_seed(0)
    teacher = resnet.build_model(1, args.size, classes, name="teacher")
    d = common.distiller(args.width, args.size, classes, "plain")
    online = common.distiller(args.width, args.size, classes, "online", teacher)
    x, y = common.random_batch(args.batch, args.size, classes)
    m, variables = d.student, d.trained_variables

    fwd_inf = tf.function(lambda x: m(x, training=False)["logits"])
    fwd_train = tf.function(lambda x: m(x, training=True)["logits"])
    t_fwd = tf.function(lambda x: teacher(x, training=False)["logits"])

    @tf.function
    def grads(x, y):
        with tf.GradientTape() as tape:
            loss = d._loss(x, y, training=True)
        return tape.gradient(loss, variables)

    g = grads(x, y)

    @tf.function
    def update(g):
        d.optimizer.apply_gradients(zip(g, variables))

    parts = {
        "student forward, inference": lambda: fwd_inf(x).numpy(),
        "student forward, training": lambda: fwd_train(x).numpy(),
        "student forward + backward": lambda: grads(x, y)[0].numpy(),
        "optimizer update": lambda: update(g),
        "teacher forward (inference)": lambda: t_fwd(x).numpy(),
        "plain train step": common.step_fn(d, x, y),
        "online distill step": common.step_fn(online, x, y),
    }
    secs = common.rounds(parts, args.repeats, 3 if args.size <= 64 else 1, warmup=2)
    step = secs["plain train step"]
    print()
    print(f"/{args.width} student, {args.size} px, batch {args.batch}, {classes} classes; "
          f"{len(variables)} trained variables\n")
    print(common.table(["part", "ms", "÷ plain train step"],
                       [[k, f"{1e3 * v:.1f}", f"{v / step:.2f}"] for k, v in secs.items()]))
    common.write_json(args.json, "breakdown", secs)
    common.footer()
    print(f"RATIO breakdown: ÷ plain /{args.width} train step at {args.size}px: forward+backward "
          f"{secs['student forward + backward'] / step:.2f}, optimizer {secs['optimizer update'] / step:.2f}, "
          f"teacher forward {secs['teacher forward (inference)'] / step:.2f}, online distill step "
          f"{secs['online distill step'] / step:.2f}")
    return secs


if __name__ == "__main__":
    main()
