"""TensorFlow's thread pools: each train step with one thread per op and two for independent ops (keras-kd's
default on a machine of two cores or fewer, keras_kd/cpu.py) ÷ with TensorFlow's own sizes (as many threads
per op as cores).

    python -m bench.threads [--size=48] [--batch=32] [--repeats=3] [--steps=20] [--blocks=1,1,1,1]

TensorFlow reads its pool sizes once per process, so each setting is timed in a child process of its own
(this module with --child), the two settings alternating --repeats times; a child times --steps calls of
each step after two warm-up calls, and the median over the repeats is reported. The steps, on a fixed
batch through fit's own train function: the /8 student's label-only step (classification and alignment's
spatial head) and the ResNet-50 teacher's own (in the precision --teacher_precision=auto picks here), and
"Ours" /8 with that teacher online. --blocks makes every network a shallower ResNet (a quick check of the
benchmark itself, not a measurement).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

from bench import common

SETTINGS = {"keras-kd (1 per op)": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"},
            "TensorFlow's (0: its own)": {"TF_NUM_INTRAOP_THREADS": "0", "TF_NUM_INTEROP_THREADS": "0"}}
OURS, THEIRS = SETTINGS


def child(size: int, batch: int, steps: int, blocks: Tuple[int, ...]) -> Dict[str, float]:
    """Seconds per call of each step, in this process's thread pools (and the Conv2D input gradient training
    installs, as the parent's header says)."""
    from keras_kd import conv_grad
    from keras_kd.distill import losses
    from keras_kd.distill.distiller import Distiller
    from keras_kd.keras import keras, tf
    from keras_kd.models import archs, precision

    conv_grad.install()
    classes = common.QUICK_CLASSES
    x, y = common.random_batch(batch, size, classes)
    y["landmarks"] = tf.random.uniform((batch, 5, 2), seed=0)
    keras.utils.set_random_seed(0)

    def build(width, heads=(), compute="float32"):
        return archs.build_model("resnet50", width, size, classes, heads=heads, landmark_head="spatial",
                                 compute=compute, blocks=blocks, name=f"net_d{width}")

    def align(y_, s):
        return losses.landmark_l2(y_["landmarks"], s["landmarks"])

    def compiled(d):
        d.compile(keras.optimizers.AdamW(1e-3))
        return d

    teacher_compute = precision.resolve("auto")
    teacher = build(1, compute=teacher_compute)
    cases = {
        "/8 label-only step": compiled(Distiller(build(8), task_loss=common.ce)),
        "/8 alignment step (spatial head)": compiled(Distiller(build(8, ("landmarks",)), task_loss=align)),
        "teacher train step": compiled(Distiller(build(1, compute=teacher_compute), task_loss=common.ce)),
        "/8 \"Ours\" step, teacher online": compiled(Distiller(build(8), teacher, task_loss=common.ce,
                                                                targets=[("soft", 1.0)])),
    }
    fns = {k: common.step_fn(d, x, y) for k, d in cases.items()}
    return common.rounds(fns, repeats=1, number=steps, warmup=2)


def main(argv=None) -> Tuple[List[dict], str]:
    p = common.parser(__doc__)
    p.add_argument("--size", type=int, default=common.QUICK)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="alternating child processes per setting (median)")
    p.add_argument("--steps", type=int, default=20, help="timed calls of each step in a child")
    p.add_argument("--blocks", default="", help="residual blocks per stage (default ResNet-50's 3,4,6,3)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    blocks = tuple(common.ints(args.blocks)) if args.blocks else ()
    if args.child:
        print(json.dumps(child(args.size, args.batch, args.steps, blocks)))
        return [], ""
    common.header("threads")
    times: Dict[str, Dict[str, List[float]]] = {s: {} for s in SETTINGS}
    cmd = [sys.executable, "-m", "bench.threads", "--child", f"--size={args.size}", f"--batch={args.batch}",
           f"--steps={args.steps}"] + ([f"--blocks={args.blocks}"] if args.blocks else [])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for r in range(args.repeats):
        for name, env in SETTINGS.items():
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=root, env=dict(os.environ, **env), capture_output=True, text=True,
                                 check=True).stdout
            secs = json.loads(out.strip().splitlines()[-1])
            for case, s in secs.items():
                times[name].setdefault(case, []).append(s)
            print(f"# round {r + 1}, {name}: " + ", ".join(f"{c} {s * 1e3:.1f} ms" for c, s in secs.items())
                  + f" ({time.perf_counter() - t0:.0f} s); {common.load()}", flush=True)
    rows = [row(case, args.size, args.batch, statistics.median(times[OURS][case]),
                statistics.median(times[THEIRS][case])) for case in times[OURS]]
    text, line = report(rows)
    print()
    print(text)
    common.write_json(args.json, "threads", {"rows": rows})
    common.footer()
    print(line)
    return rows, line


def row(case: str, size: int, batch: int, ours: float, theirs: float) -> dict:
    return {"case": case, "size": size, "batch": batch, "one_per_op_s": ours, "tensorflow_s": theirs,
            "ratio": ours / theirs}


def report(rows: List[dict]) -> Tuple[str, str]:
    """(the table, the RATIO line)."""
    text = common.table(["step", "input", "batch", "1 thread per op (s)", "TensorFlow's pools (s)",
                         "1 per op ÷ TensorFlow's"],
                        [[r["case"], r["size"], r["batch"], r["one_per_op_s"], r["tensorflow_s"],
                          f"{r['ratio']:.2f}"] for r in rows])
    line = ("RATIO threads: step time with 1 thread per op (2 inter-op) ÷ with TensorFlow's pools: "
            + ", ".join(f"{r['case']} {r['ratio']:.2f}" for r in rows))
    return text, line


if __name__ == "__main__":
    main()
