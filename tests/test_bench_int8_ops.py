"""bench.int8_ops: every form computes the function of its reference, and the table on made-up figures."""
import numpy as np

from bench import int8_ops


def test_every_form_equals_its_reference_in_float():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32) * 40  # past the bends
    for form, (_, _, ref, _) in int8_ops.FORMS.items():
        if ref:
            want = int8_ops.build(ref, 16)(x)["logits"].numpy()
            np.testing.assert_allclose(int8_ops.build(form, 16)(x)["logits"].numpy(), want, rtol=1e-4, atol=1e-4,
                                       err_msg=form)
    assert sum(export for *_, export in int8_ops.FORMS.values()) == 2  # one PReLU, one hard-swish


def test_report_marks_the_export_forms_and_divides_by_relu():
    rows = [{"form": "relu", "name": "ReLU", "export": False, "int8_s": 0.001, "fp32_s": 0.002, "int8_ops": {}},
            {"form": "prelu_max", "name": "max", "export": True, "int8_s": 0.002, "fp32_s": 0.002,
             "int8_ops": {"MUL": 6, "MAXIMUM": 6}}]
    text, line = int8_ops.report(rows)
    assert "| max **export** | 2.000 | 2.00 | 2.000 | MAXIMUM 6, MUL 6 |" in text
    assert line.endswith("relu 1.00, prelu_max 2.00")


def test_students_report_divides_before_by_after():
    rows = [{"net": "MobileFaceNet", "tag": "mbf", "size": 112, "rounds": 2, "before_int8_s": 0.018,
             "after_int8_s": 0.0015, "before_fp32_s": 0.002, "after_fp32_s": 0.0025}]
    text, line = int8_ops.students_report(rows)
    assert "| MobileFaceNet | 112 | 18.000 | 1.500 | 12.0 | 2.500 |" in text
    assert line.endswith("mbf@112 12.0")


def test_without_rewrites_restores_the_exporter():
    from export import int8_ops as rewrites
    rewrite = rewrites.rewrite
    with int8_ops.without_rewrites():
        assert rewrites.rewrite is not rewrite and rewrites.rewrite("model") == "model"
    assert rewrites.rewrite is rewrite


def test_with_relu_keeps_the_weights_and_is_prelu_with_zero_slopes():
    from keras_kd.keras import keras
    from keras_kd.models import archs
    keras.utils.set_random_seed(0)
    model = archs.build_model("mobilefacenet", 1, 32, 5, name="mbf")
    copy = int8_ops.with_relu(model)
    assert not any(isinstance(layer, keras.layers.PReLU) for layer in copy.layers)
    assert sum(isinstance(layer, keras.layers.ReLU) for layer in copy.layers) == sum(
        isinstance(layer, keras.layers.PReLU) for layer in model.layers) > 0
    for layer in model.layers:  # a PReLU with every slope 0 is ReLU
        if isinstance(layer, keras.layers.PReLU):
            layer.set_weights([np.zeros_like(layer.get_weights()[0])])
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(copy(x)["logits"].numpy(), model(x)["logits"].numpy(), rtol=1e-4, atol=1e-4)


def test_floor_report_divides_by_resnet_d4_at_each_size():
    rows = [{"key": k, "net": k, "size": size, "rounds": 2, "int8_s": s}
            for size, scale in ((48, 1.0), (112, 4.0))
            for k, s in (("d4", 0.0002 * scale), ("mbf", 0.0005 * scale), ("mbf_relu", 0.0004 * scale))]
    text, line = int8_ops.floor_report(rows)
    assert "| mbf_relu | 112 | 1.600 | 2.00 |" in text
    assert line.endswith("mbf@48 2.50, mbf_relu@48 2.00, mbf@112 2.50, mbf_relu@112 2.00")
