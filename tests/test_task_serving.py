"""Each registered task's serving pieces (keras_kd/tasks, used by export/): the SavedModel graph's outputs
equal their independent numpy check on random raw outputs, and the predict rows and model units follow
from them. No model is trained."""
import numpy as np
import pytest

from export import saved_model, tflite
from keras_kd.keras import tf
from keras_kd.tasks import TASKS, Stage

SIZE, N = 32, 4
SHAPES = {"logits": [7], "landmarks": [5, 2], "embedding": [16]}  # a raw output's shape after the batch axis
HW = np.array([[40, 50], [37, 37], [64, 30], [32, 32]])          # input images' (height, width)


def _raw(task, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=[N, *SHAPES[k]]).astype(np.float32) for k in task.model_output_keys}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_declares_its_serving_pieces(name):
    t = TASKS[name]
    assert t.model_output_keys and set(t.model_output_keys) <= set(SHAPES), t.model_output_keys
    assert t.serving_output_names
    out = t.expected_serving_outputs(_raw(t), SIZE, None)
    assert tuple(out) == t.serving_output_names
    rows = [t.prediction_row(out, i) for i in range(N)]
    assert all(rows) and rows[0] != rows[1]
    fields = t.csv_fields(rows[0])
    assert fields and all(np.isscalar(v) for v in fields.values())
    assert t.teacher_stage(Stage(name, "student_d2_x", 2, "scratch", 1, 0.1)) == (name, "teacher")
    assert all(f.isidentifier() for f in t.shape_flags)


@pytest.mark.parametrize("input_hw", [None, HW], ids=["crop_pixels", "input_pixels"])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_tf_serving_outputs_equal_their_numpy_check(name, input_hw):
    t = TASKS[name]
    raw = _raw(t)
    to_input = None if input_hw is None else saved_model.input_scale(tf.constant(input_hw),
                                                                      saved_model.resize_size(SIZE))
    graph = tf.function(lambda r: t.serving_outputs(r, SIZE, saved_model.crop_offset(SIZE), to_input))
    got = {k: v.numpy() for k, v in graph({k: tf.constant(v) for k, v in raw.items()}).items()}
    want = saved_model.expected_outputs(name, raw, SIZE, input_hw)
    assert set(got) == set(want) == set(t.serving_output_names)
    diffs = saved_model.max_diffs(got, want, saved_model.output_units(name, SIZE, input_hw))
    assert diffs and all(v <= 1e-5 for v in diffs.values()), diffs


@pytest.mark.parametrize("name", sorted(TASKS))
def test_crop_outputs_in_model_units_are_what_tflite_files_are_compared_with(name):
    t = TASKS[name]
    raw = _raw(t, seed=1)
    ref = t.model_unit_outputs(raw)
    back = tflite.to_model_units(name, saved_model.expected_outputs(name, raw, SIZE, None), SIZE)
    assert set(ref) <= set(t.serving_output_names)
    for k in ref:
        np.testing.assert_allclose(back[k], ref[k], atol=1e-6)


def test_a_class_id_may_flip_only_on_a_near_tie():
    logits = np.array([[1.0, 1.0 + 5e-5, -2.0], [0.0, 3.0, 1.0]], np.float32)
    assert TASKS["classify"].allowed_mismatches({"logits": logits}, 1e-4) == 1
    assert TASKS["classify"].allowed_mismatches({"logits": logits}, 1e-6) == 0
