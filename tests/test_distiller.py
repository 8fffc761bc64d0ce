"""The Distiller: frozen teacher, student-only updates, adapters, loss reduction, replicas."""
import textwrap

import numpy as np
import pytest

from conftest import run_two_cpu_script
from keras_kd.distill import losses
from keras_kd.distill.distiller import Distiller
from keras_kd.keras import keras, tf
from keras_kd.models import resnet

SIZE = 32
CLASSES = 4


def _ce(y, s):
    return losses.label_ce(y["label"], s["logits"])


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    return x, y


def _dataset(n=8, batch=4, seed=0):
    x, y = _batch(n, seed)
    return tf.data.Dataset.from_tensor_slices((x, {"label": y})).batch(batch)


def _models(student_d=8, teacher_d=4, seed=0):
    keras.utils.set_random_seed(seed)
    return (resnet.build_model(student_d, SIZE, CLASSES, name="student"),
            resnet.build_model(teacher_d, SIZE, CLASSES, name="teacher"))


def _ids(variables):
    return {id(v) for v in variables}


@pytest.fixture(scope="module")
def trained():
    """Student /8 distilled from teacher /4 with task CE + soft + hidden, 2 fit steps of 4 images."""
    student, teacher = _models()
    s_before = {v.name: v.numpy().copy() for v in student.weights}
    t_before = [w.copy() for w in teacher.get_weights()]
    d = Distiller(student, teacher, task_loss=_ce, targets=[("soft", 1.0), ("hidden", 0.5)])
    a_before = [w.copy() for w in d.adapters["hidden"].get_weights()]
    d.compile(keras.optimizers.SGD(0.1))
    history = d.fit(_dataset(), epochs=1, verbose=0)
    return dict(d=d, student=student, teacher=teacher, s_before=s_before, t_before=t_before,
                a_before=a_before, history=history.history)


def test_teacher_weights_unchanged_bit_for_bit(trained):
    after = trained["teacher"].get_weights()
    assert len(after) == len(trained["t_before"])
    for a, b in zip(trained["t_before"], after):  # BN moving statistics included
        np.testing.assert_array_equal(a, b)
    assert trained["teacher"].trainable is False


def test_student_and_adapter_weights_change(trained):
    student, before = trained["student"], trained["s_before"]
    assert len(before) == len(student.weights)  # variable names are unique
    changed = [not np.array_equal(before[v.name], v.numpy()) for v in student.weights]
    assert sum(changed) > 0.9 * len(changed)
    for name in ("stem_conv", "s4b3_conv3", "logits"):
        kernel = student.get_layer(name).weights[0]
        assert not np.array_equal(kernel.numpy(), before[kernel.name]), name
    for a, b in zip(trained["a_before"], trained["d"].adapters["hidden"].get_weights()):
        assert not np.array_equal(a, b)


def test_history_reports_every_term(trained):
    h = trained["history"]
    assert set(h) == {"loss", "task", "soft", "hidden"}
    for k in ("task", "soft", "hidden"):
        assert np.isfinite(h[k][0]) and h[k][0] >= 0
    # Each term is a per-example mean and the total their sum (Mean over the same 2 equal batches).
    np.testing.assert_allclose(h["loss"][0], h["task"][0] + h["soft"][0] + h["hidden"][0], rtol=1e-5)


def test_trained_variables_exclude_the_teacher(trained):
    d, student, teacher = trained["d"], trained["student"], trained["teacher"]
    trained_ids = _ids(d.trained_variables)
    assert not trained_ids & _ids(teacher.weights)
    assert _ids(student.trainable_variables) <= trained_ids
    assert _ids(d.adapters["hidden"].trainable_variables) <= trained_ids
    assert len(trained_ids) == len(student.trainable_variables) + 2  # + adapter kernel and bias


def test_checkpoints_leave_the_frozen_teacher_out(trained, tmp_path):
    """Stage backups checkpoint the Distiller: they hold what training changes, not the teacher's weights."""
    d, student, teacher = trained["d"], trained["student"], trained["teacher"]
    assert d.teacher is teacher
    assert not _ids(d.variables) & _ids(teacher.weights)
    assert _ids(student.weights) | _ids(d.adapters["hidden"].weights) <= _ids(d.variables)
    path = tf.train.Checkpoint(model=d).save(str(tmp_path / "backup"))
    saved = sum(int(np.prod(shape)) for key, shape in tf.train.list_variables(path) if key.endswith("VALUE"))
    own = sum(v.shape.num_elements() for v in d.variables + d.optimizer.variables())
    assert own <= saved < own + 10  # + the checkpoint's own counters
    assert saved < teacher.count_params()


def test_no_gradient_reaches_the_teacher(trained):
    d, teacher = trained["d"], trained["teacher"]
    x, y = _batch(4, seed=3)
    with tf.GradientTape() as tape:
        tape.watch(teacher.weights)  # watched explicitly: only stop_gradient can cut them off
        loss = d._loss(tf.constant(x), {"label": tf.constant(y)}, training=True)
    grads = tape.gradient(loss, teacher.weights)
    assert all(g is None or not np.any(g.numpy()) for g in grads)


@pytest.fixture(scope="module")
def fresh():
    """Untrained student /8, teachers /8 and /4: for tests that only construct Distillers."""
    keras.utils.set_random_seed(0)
    return {d: resnet.build_model(d, SIZE, CLASSES, name=f"net_d{d}") for d in (8, 4)}


def test_adapter_only_when_widths_differ(fresh):
    student = fresh[8]
    teacher8 = keras.models.clone_model(student)
    same = Distiller(student, teacher8, task_loss=_ce, targets=[("soft", 1.0), ("hidden", 1.0)])
    assert same.adapters == {"soft": None, "hidden": None}
    assert _ids(same.trained_variables) == _ids(student.trainable_variables)

    wide = Distiller(student, fresh[4], task_loss=_ce, targets=[("soft", 1.0), ("hidden", 1.0)])
    assert wide.adapters["soft"] is None  # logits: same class count, never adapted
    adapter = wide.adapters["hidden"]
    assert isinstance(adapter, keras.layers.Dense) and adapter.built
    assert adapter.kernel.shape == (2048 // 8, 2048 // 4)


def test_logits_target_with_different_class_counts_raises(fresh):
    teacher = resnet.build_model(8, SIZE, CLASSES + 1)
    with pytest.raises(ValueError, match="widths differ"):
        Distiller(fresh[8], teacher, task_loss=_ce, targets=[("logits", 1.0)])


def test_hint_target_trains_only_below_the_hint_through_a_conv1x1_adapter():
    """FitNet's hint stage: no task loss, only ‖conv1x1(hint_S) − hint_T‖²."""
    student, teacher = _models(8, 4)
    d = Distiller(student, teacher, targets=[("hint", 1.0)])
    adapter = d.adapters["hint"]
    assert isinstance(adapter, keras.layers.Conv2D)
    assert adapter.kernel.shape == (1, 1, 512 // 8, 512 // 4) and not adapter.use_bias
    k_before = adapter.kernel.numpy().copy()
    # Below the hint: the stem and the residual branch's zero-initialized BN scale (the branch convs
    # themselves get no gradient on the first step, since that scale multiplies them by 0).
    stem = student.get_layer("stem_conv").kernel.numpy().copy()
    gamma = student.get_layer("s2b4_bn3").gamma.numpy().copy()
    above = student.get_layer("s3b1_conv1").kernel.numpy().copy()
    head = student.get_layer("logits").kernel.numpy().copy()
    t_before = [w.copy() for w in teacher.get_weights()]
    d.compile(keras.optimizers.SGD(0.1))
    x, y = _batch(4, seed=2)
    h = {k: float(v) for k, v in d.train_step((tf.constant(x), {"label": tf.constant(y)})).items()}
    assert set(h) == {"loss", "hint"} and h["loss"] > 0 and h["loss"] == h["hint"]
    assert not np.array_equal(adapter.kernel.numpy(), k_before)
    assert not np.array_equal(student.get_layer("stem_conv").kernel.numpy(), stem)
    assert not np.array_equal(student.get_layer("s2b4_bn3").gamma.numpy(), gamma)
    # Layers past the hint and the class head get no gradient: left out of the update, unchanged.
    np.testing.assert_array_equal(student.get_layer("s3b1_conv1").kernel.numpy(), above)
    np.testing.assert_array_equal(student.get_layer("logits").kernel.numpy(), head)
    for a, b in zip(t_before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_constructor_errors(fresh):
    student, teacher = fresh[8], fresh[4]
    with pytest.raises(ValueError, match="need a teacher"):
        Distiller(student, None, task_loss=_ce, targets=[("soft", 1.0)])
    with pytest.raises(ValueError, match="nothing to train"):
        Distiller(student, teacher, task_loss=None, targets=())
    with pytest.raises(ValueError, match="nothing to train"):
        Distiller(student)
    plain = Distiller(student, task_loss=_ce)  # no teacher, task loss only: plain supervised training
    assert plain.adapters == {} and set(t.name for t in plain.metrics) == {"loss", "task"}


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def test_reported_loss_equals_the_hand_combined_value():
    student, teacher = _models(8, 4, seed=5)
    # A fresh class head gives near-uniform logits; a sharper teacher makes the soft term substantial.
    kernel = teacher.get_layer("logits").kernel
    kernel.assign(kernel * 30.0)
    alpha, beta = 0.7, 0.5
    d = Distiller(student, teacher, task_loss=_ce, targets=[("soft", alpha), ("hidden", beta)])
    x, y = _batch(8, seed=1)
    got = {k: float(v) for k, v in d.test_step((tf.constant(x), {"label": tf.constant(y)})).items()}
    assert set(got) == {"loss", "task", "soft", "hidden"}

    s = {k: v.numpy().astype(np.float64) for k, v in student(x, training=False).items()}
    t = {k: v.numpy().astype(np.float64) for k, v in teacher(x, training=False).items()}
    # task: −log softmax(s)[y]
    ce = -np.log(_softmax(s["logits"])[np.arange(8), y])
    # soft: KL(softmax(t/3) ‖ softmax(s/3)) = Σ p (log p − log q)
    p, q = _softmax(t["logits"] / 3), _softmax(s["logits"] / 3)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    # hidden: mean over the teacher's 512 dims of (adapter(K_S) − K_T)², adapter = dense K_S W + b
    kernel, bias = (w.astype(np.float64) for w in d.adapters["hidden"].get_weights())
    hid = ((s["hidden"] @ kernel + bias - t["hidden"]) ** 2).mean(-1)
    total = ce + alpha * kl + beta * hid
    assert kl.mean() > 1e-2 and hid.mean() > 1e-6  # the terms are not trivially zero

    np.testing.assert_allclose(got["task"], ce.mean(), rtol=1e-4)
    np.testing.assert_allclose(got["soft"], alpha * kl.mean(), rtol=1e-4)
    np.testing.assert_allclose(got["hidden"], beta * hid.mean(), rtol=1e-4)
    np.testing.assert_allclose(got["loss"], total.mean(), rtol=1e-4)
    # The loss differentiated in train_step is the same value: the sum over the global batch / 8.
    loss = d._loss(tf.constant(x), {"label": tf.constant(y)}, training=False)
    np.testing.assert_allclose(loss.numpy(), total.mean(), rtol=1e-4)


MIRRORED_SCRIPT = textwrap.dedent("""
    a0 = [rng.normal(0, 0.05, (256, 512)).astype("float32"), np.zeros(512, "float32")]

    def build():
        s = freeze_bn(resnet.build_model(8, 32, 4, name="student"))
        s.set_weights(s0)
        t = resnet.build_model(4, 32, 4, name="teacher")
        t.set_weights(t0)
        d = Distiller(s, t, task_loss=lambda yy, o: losses.label_ce(yy["label"], o["logits"]),
                      targets=[("soft", 1.0), ("hidden", 0.5)])
        d.adapters["hidden"].set_weights(a0)
        return d

    compare_mirrored(build)  # the reference step runs eagerly (saves a trace), the replicated one in fit
""")



@pytest.mark.slow  # a TensorFlow subprocess: ~25 s on an idle 2-core machine
def test_mirrored_two_replicas_match_one_device():
    """One step on the same global batch of 8: 2 CPU replicas × 4 images == 1 device × 8 images.

    Logical CPU devices must be configured before TensorFlow initializes, hence a subprocess. The
    student's BN layers are frozen (inference mode): with training-mode BN each replica normalizes with
    its own 4-image statistics (non-synchronized BN), so neither the loss nor the update would match.
    """
    r = run_two_cpu_script(MIRRORED_SCRIPT)
    assert r["replicas"] == [1, 2]
    assert r["same_start"] and r["size"][0] == r["size"][1]
    assert r["change"] > 1e-3  # the step moved the weights: the comparison below is not vacuous
    np.testing.assert_allclose(r["loss"][1], r["loss"][0], rtol=1e-5)
    assert r["diff"] < 1e-4, r
