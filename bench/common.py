"""What every benchmark shares: the environment header, round-robin timing, train steps, tables."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from keras_kd import conv_grad
from keras_kd.keras import keras, tf

QUICK, PAPER = 48, 224          # the presets' input sizes
QUICK_CLASSES = 30              # quick preset's synthetic identities
PAPER_CLASSES = 10575           # CASIA-WebFace identities (the paper's classification data)


# ---- environment ----------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def devices() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        return f"{len(gpus)} GPU ({', '.join(names)})"
    return "CPU only"


def environment() -> Dict[str, str]:
    import tf_keras
    return {"date": now(), "cpu": cpu_model(), "cores": str(os.cpu_count()), "devices": devices(),
            "python": platform.python_version(), "tensorflow": tf.__version__, "tf_keras": tf_keras.__version__,
            "numpy": np.__version__, "load": load()}


def header(name: str) -> None:
    """Also installs keras-kd's Conv2D input gradient, as training does (keras_kd/conv_grad.py)."""
    grad = "keras-kd's" if conv_grad.install() else "TensorFlow's"
    env = environment()
    print(f"# bench.{name}: python -m bench.{name} {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {env['date']}; {env['cpu']}, {env['cores']} cores, {env['devices']}; {env['load']}")
    print(f"# python {env['python']}, tensorflow {env['tensorflow']}, tf_keras {env['tf_keras']}, "
          f"numpy {env['numpy']}; Conv2D input gradient: {grad}")
    sys.stdout.flush()


def footer() -> None:
    print(f"# finished {now()}; {load()}")


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    return p


def ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def write_json(path: str, name: str, figures) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"bench": name, "env": environment(), "argv": sys.argv[1:], "figures": figures}, f,
                      indent=1, default=float)


# ---- timing ---------------------------------------------------------------------------------------------
def rounds(fns: Dict[str, Callable[[], None]], repeats: int, number: int = 1, warmup: int = 1) -> Dict[str, float]:
    """Median seconds per call of each fn: warm-up calls first, then `repeats` alternating rounds of
    `number` calls each (A B C A B C ...), so load that comes and goes hits every variant alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times[k].append((time.perf_counter() - t0) / number)
    return {k: statistics.median(v) for k, v in times.items()}


# ---- train steps ----------------------------------------------------------------------------------------
def ce(y, s):
    from keras_kd.distill import losses
    return losses.label_ce(y["label"], tf.cast(s["logits"], tf.float32))


def random_batch(batch: int, size: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    return tf.constant(x), {"label": tf.constant(y)}


def distiller(width: int, size: int, classes: int, kind: str, teacher: Optional[keras.Model] = None,
              targets: Sequence = (("soft", 1.0),), jit_compile: bool = False, steps_per_execution: int = 1,
              student: Optional[keras.Model] = None):
    """A compiled Distiller as the Runner makes it: "plain" (labels only), "online" or "cached" teacher."""
    from keras_kd.distill.distiller import Distiller
    from keras_kd.models import resnet
    student = student or resnet.build_model(width, size, classes, name=f"student_d{width}")
    if kind == "plain":
        d = Distiller(student, None, task_loss=ce)
    else:
        d = Distiller(student, teacher, task_loss=ce, targets=list(targets))
    d.compile(keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
              steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    return d


def step_fn(d, x, y) -> Callable[[], None]:
    """One call = `steps_per_execution` train steps on a fixed batch, through fit's own train function."""
    it = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    train = d.make_train_function()

    def run():
        out = train(it)
        float(out["loss"])  # wait for the step (and fetch a result as fit does)
    return run


def with_teacher_outputs(teacher: keras.Model, x, y) -> dict:
    """The targets dict with precomputed teacher outputs, as the teacher cache streams them."""
    out = teacher(x, training=False)
    return {**y, "teacher": {"logits": out["logits"], "hidden": out["hidden"]}}


# ---- output ---------------------------------------------------------------------------------------------
def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def synthetic_data(identities: int = 30, images: int = 36, size: int = 56) -> str:
    """A synthetic data set (the quick preset's by default), generated once under bench/.data/."""
    from keras_kd.data import synthetic
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".data",
                        synthetic.folder_name(identities, images, size))
    if not os.path.exists(os.path.join(path, "meta.json")):
        synthetic.write_synthetic(path, identities, images, size, seed=0, log=lambda *_: None)
    return path
