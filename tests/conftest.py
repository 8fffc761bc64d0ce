import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The paper's optimization (the paper preset's), for tests whose expectations were written against it;
# Config's defaults are the quick preset's short-run recipe (AdamW, warm-up, cosine).
PAPER_RECIPE = dict(optimizer="sgd", lr_schedule="step", warmup_epochs=0.0, lr_scratch=0.1, lr_init=0.01,
                    lr_transfer=0.0, weight_decay=1e-4)


def run_main(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Runs `python main.py ARGS` as a user would; returns the finished process (output captured)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    """A finished `run_main` that must have succeeded: its whole output, or its tail in the failure."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def kill_after_first_backup(args, backup) -> None:
    """Starts `python main.py ARGS` and kill -9s it once the stage backed up in `backup` (its
    <model_dir>/<task>/backup/<stage> folder) has saved its first epoch: a run to resume."""
    import signal
    import time

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def epochs_backed_up() -> int:
        try:
            return len(json.loads((backup / "history.json").read_text()))
        except (OSError, ValueError):
            return 0
    while not ((backup / "chief" / "checkpoint").exists() and epochs_backed_up() >= 1) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not present (real face data lives beside the repo, never in it)")
    return SHARED_DATA


# The start of every 2-replica script: logical CPUs must be configured before TensorFlow initializes, hence
# a subprocess; then a fixed batch and fixed student (/8) and teacher (/4) weights.
TWO_CPU_PREAMBLE = textwrap.dedent("""
    import json
    import numpy as np
    from keras_kd.keras import keras, tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from keras_kd.distill import losses
    from keras_kd.distill.distiller import Distiller
    from keras_kd.models import resnet

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 4, 8).astype("int32")
    keras.utils.set_random_seed(0)
    s0 = resnet.build_model(8, 32, 4, name="student").get_weights()
    t0 = resnet.build_model(4, 32, 4, name="teacher").get_weights()

    def freeze_bn(model):
        # Frozen BN runs in inference mode: per-example forward, so replicas see the same function (with
        # training-mode BN each replica normalizes with its own 4-image statistics: non-synchronized BN).
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        return model

    def one_step(strategy, eager, build):
        with strategy.scope():
            d = build()  # a Distiller, built in the scope
            d.compile(keras.optimizers.SGD(0.5), run_eagerly=eager)
        before = np.concatenate([v.numpy().ravel() for v in d.trained_variables])
        h = d.fit(tf.data.Dataset.from_tensors((x, {"label": y})), epochs=1, verbose=0).history
        after = np.concatenate([v.numpy().ravel() for v in d.trained_variables])
        return strategy.num_replicas_in_sync, float(h["loss"][0]), before, after

    def compare_mirrored(build):
        # Prints RESULT: one step of build()'s Distiller on 1 device (eager) and on 2 mirrored replicas.
        n1, l1, b1, w1 = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), True, build)
        n2, l2, b2, w2 = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), False, build)
        print("RESULT " + json.dumps(dict(replicas=[n1, n2], loss=[l1, l2], size=[int(w1.size), int(w2.size)],
                                          same_start=bool(np.array_equal(b1, b2)),
                                          change=float(np.abs(w1 - b1).max()), diff=float(np.abs(w1 - w2).max()))))
""")


def run_two_cpu_script(body: str) -> dict:
    """Runs TWO_CPU_PREAMBLE + body (which prints one 'RESULT {json}' line) in a subprocess; returns the json."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", TWO_CPU_PREAMBLE + body], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture
def parse():
    """Parses a main.py command line into its Config (flags reset before and after)."""
    import flags.main_flags as main_flags  # defines main.py's flags: only in tests that parse them
    from absl import flags

    def _parse(*argv):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["main.py", *argv])
        return main_flags.to_config()
    yield _parse
    flags.FLAGS.unparse_flags()

