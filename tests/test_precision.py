"""Teachers in mixed bfloat16 (models/precision.py): chosen by the CPU, float32 at every output, the same
weights as in float32, and usable by every distillation loss beside a float32 student."""
import numpy as np
import pytest

from keras_kd import cpu
from keras_kd.config import Config
from keras_kd.distill.distiller import Distiller
from keras_kd.keras import keras, tf
from keras_kd.models import archs, network, precision

SMALL = dict(blocks=(1, 1, 1, 1))


def _model(compute, **kw):
    return archs.build_model("resnet50", kw.pop("width_divisor", 4), 32, 5, ("landmarks",), name="m",
                             compute=compute, **{**SMALL, **kw})


def test_auto_is_bfloat16_on_a_cpu_with_bfloat16_instructions_only(monkeypatch):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: auto is float32 whatever the CPU")
    monkeypatch.setattr(cpu, "features", lambda: frozenset({"avx512f", "amx_bf16", "amx_tile"}))
    assert precision.resolve("auto") == "bfloat16"
    monkeypatch.setattr(cpu, "features", lambda: frozenset({"avx512f", "avx512_bf16"}))  # AMD EPYC (Zen 4)
    assert precision.resolve("auto") == "bfloat16"
    monkeypatch.setattr(cpu, "features", lambda: frozenset({"avx2", "avx512f"}))  # no bfloat16 instructions
    assert precision.resolve("auto") == "float32"
    monkeypatch.setattr(cpu, "features", lambda: frozenset())  # not Linux, flags unknown
    assert precision.resolve("auto") == "float32"
    assert precision.resolve("float32") == "float32" and precision.resolve("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, got 'half'"):
        precision.resolve("half")


def test_a_bfloat16_model_has_float32_outputs_and_the_float32_models_weights():
    keras.utils.set_random_seed(0)
    f32 = _model("float32")
    bf16 = _model("bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"  # building left the policy as it was
    convs = [l for l in bf16.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs and all(l.compute_dtype == "bfloat16" and l.variable_dtype == "float32" for l in convs)
    # the same layers with weights, in the same order: weights files and transfer_weights move between them
    assert [(w.name, w.shape) for w in f32.weights] == [(w.name, w.shape) for w in bf16.weights]
    assert len(network.transfer_weights(f32, bf16)) == len([l for l in f32.layers if l.weights])
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    a, b = f32(x, training=False), bf16(x, training=False)
    assert set(a) == set(b) == {"logits", "hidden", "hint", "landmarks"}
    for k in a:
        assert b[k].dtype == tf.float32
        scale = float(np.abs(a[k]).max())
        np.testing.assert_allclose(b[k], a[k], atol=0.05 * scale)  # bfloat16 keeps 8 bits of mantissa
    assert not np.array_equal(a["logits"], b["logits"])  # it did compute in bfloat16
    feats = archs.feature_model(bf16, ["stage2", "stage3"])(x, training=False)
    assert feats["stage2"].dtype == tf.float32 and feats["stage3"].dtype == tf.float32


@pytest.mark.parametrize("targets", [[("soft", 1.0), ("hidden", 1.0)], [("at", 1.0)], [("fitnet", 1.0)]])
def test_a_float32_student_distils_from_a_bfloat16_teacher(targets):
    keras.utils.set_random_seed(0)
    teacher = _model("bfloat16", width_divisor=1)
    student = _model("float32", width_divisor=8)
    d = Distiller(student, teacher, lambda y, s: tf.reduce_mean(tf.square(s["landmarks"] - y), [1, 2]), targets,
                  config=Config())
    d.compile(keras.optimizers.Adam(1e-3))
    x = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    y = np.random.default_rng(1).uniform(0, 1, (8, 5, 2)).astype("float32")
    h = d.fit(x, y, batch_size=4, epochs=2, verbose=0).history
    assert all(np.isfinite(h["loss"])) and h["loss"][-1] < h["loss"][0]
    assert all(v.dtype == tf.float32 for v in student.trainable_variables)
