"""keras-kd's Conv2D input gradient (forward convolutions) equals TensorFlow's Conv2DBackpropInput."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from keras_kd import conv_grad, cpu
from keras_kd.keras import keras, tf
from keras_kd.models import resnet


@pytest.mark.parametrize("k,s,padding", itertools.product([1, 2, 3, 7], [1, 2, 3], ["SAME", "VALID"]))
def test_input_gradient_equals_tensorflows(k, s, padding):
    rng = np.random.default_rng(k * 100 + s)
    fn = tf.function(lambda g, w, shape: conv_grad.conv2d_input_grad(g, w, shape, (s, s), padding))
    for h, w in [(1, 2), (5, 6), (7, 12), (12, 7)]:  # odd and even sizes, the stride skipping rows or not
        if padding == "VALID" and min(h, w) < k:
            continue
        x = tf.constant(rng.normal(size=(2, h, w, 3)).astype("float32"))
        kernel = tf.constant(rng.normal(size=(k, k, 3, 5)).astype("float32"))
        g = tf.constant(rng.normal(size=tf.nn.conv2d(x, kernel, s, padding).shape).astype("float32"))
        expected = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel, out_backprop=g,
                                                  strides=[1, s, s, 1], padding=padding)
        got = fn(g, kernel, tf.shape(x))
        assert got.shape == x.shape
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _resnet_gradients():
    keras.utils.set_random_seed(0)
    model = resnet.build_model(8, 32, 5)
    for v in model.weights:  # non-zero residual scales: every convolution's input gradient matters
        if v.name.endswith("gamma:0"):
            v.assign(np.random.default_rng(1).uniform(0.5, 1.5, v.shape))
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype("float32"))

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True)["logits"] ** 2)
        return tape.gradient(loss, model.trainable_variables)
    return [g.numpy() for g in grad()]


def _tf_gradient_after(code: str, **env) -> str:
    """Runs `code` in a fresh Python; prints whether Conv2D's registered gradient is TensorFlow's then."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env)
    code += ("\nfrom tensorflow.python.framework import ops\nfrom tensorflow.python.ops import nn_grad\n"
             "print(ops._gradient_registry.lookup('Conv2D') is nn_grad._Conv2DGrad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]


def test_importing_keras_kd_leaves_tensorflows_gradient():
    assert _tf_gradient_after("import keras_kd.keras, keras_kd.stages, main", KERAS_KD_CONV_GRAD="fast") == "True"


def test_installed_where_training_starts_and_a_resnet_gradient_is_unchanged(monkeypatch):
    """training.fit_stage (the Runner's stages, export's QAT and pruning) installs it before fit traces
    anything; with it, a ResNet's gradients are TensorFlow's."""
    from keras_kd import training
    from keras_kd.config import Config

    class Installed(Exception):
        pass

    def spy(mode=None):
        raise Installed
    monkeypatch.setattr(conv_grad, "install", spy)
    with pytest.raises(Installed):
        training.fit_stage(None, Config(), 0.1, None, 1, 1)
    monkeypatch.undo()

    from tensorflow.python.framework import ops
    # "auto" keeps TensorFlow's where a GPU is visible or the CPU has AMX
    expected = not tf.config.list_physical_devices("GPU") and not cpu.has("amx_tile")
    assert conv_grad.install() == expected
    assert (ops._gradient_registry.lookup("Conv2D") is conv_grad._conv2d_grad) == expected  # noqa: SLF001
    try:
        conv_grad.install("fast")
        ours = _resnet_gradients()
        conv_grad.uninstall()
        theirs = _resnet_gradients()
    finally:
        conv_grad.install()  # back to what training uses
    scale = max(np.abs(t).max() for t in theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_auto_follows_the_cpu(monkeypatch):
    """Without a GPU, "auto" takes keras-kd's input gradient except on a CPU with AMX."""
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: auto keeps TensorFlow's gradient whatever the CPU")
    try:
        for flags, ours in ((frozenset({"avx2"}), True), (frozenset({"avx512f"}), True),
                            (frozenset({"avx512f", "amx_tile", "amx_bf16"}), False)):
            monkeypatch.setattr(cpu, "features", lambda flags=flags: flags)
            assert conv_grad.install("auto") == ours
    finally:
        monkeypatch.undo()
        conv_grad.install()


def test_bfloat16_convolutions_keep_tensorflows_gradient():
    """bfloat16 convolutions (a teacher under --teacher_precision) keep TensorFlow's Conv2DBackpropInput in their
    graph; why is bench/RESULTS.md section 12's business, not this test's."""
    x = tf.random.uniform((2, 8, 8, 16))
    kernel = tf.random.uniform((3, 3, 16, 16))

    def input_grad_ops(dtype):
        @tf.function
        def f(x, kernel):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.nn.conv2d(x, kernel, 1, "SAME")
            return tape.gradient(y, x)
        graph = f.get_concrete_function(tf.cast(x, dtype), tf.cast(kernel, dtype)).graph
        return {op.type for op in graph.get_operations()} & {"Conv2DBackpropInput"}
    try:
        conv_grad.install("fast")
        assert input_grad_ops(tf.float32) == set()
        assert input_grad_ops(tf.bfloat16) == {"Conv2DBackpropInput"}
    finally:
        conv_grad.install()


def test_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="KERAS_KD_CONV_GRAD=fastest: expected auto, fast or tf"):
        conv_grad.install("fastest")


def test_env_keeps_tensorflows_gradient():
    assert _tf_gradient_after("from keras_kd import conv_grad\nconv_grad.install()", KERAS_KD_CONV_GRAD="tf") == "True"
