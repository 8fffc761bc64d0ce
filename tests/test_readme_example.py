"""README's "Use it from Python" example runs as written: its fenced block, found by its marker comment, is
executed on two tiny Keras models and random images, so the example cannot drift from the Distiller's API."""
import re

import numpy as np

from conftest import REPO
from keras_kd.keras import keras, tf

MARKER = "# README example: tests/test_readme_example.py"
CLASSES = 4


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if MARKER in b]
    assert len(found) == 1, f"README.md has {len(found)} python blocks holding {MARKER!r}, not 1"
    return found[0]


def _tiny(width: int, name: str) -> keras.Model:
    """A model of the README's contract: images → {"logits", "hidden"}."""
    images = keras.Input((16, 16, 3))
    hidden = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(width, 3, activation="relu")(images))
    return keras.Model(images, {"logits": keras.layers.Dense(CLASSES)(hidden), "hidden": hidden}, name=name)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example saves student.keras in the working directory
    keras.utils.set_random_seed(0)
    teacher, student = _tiny(16, "teacher"), _tiny(4, "student")  # the student's K narrower: an adapter
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (8, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, 8).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, {"label": labels})).batch(4)
    t_before = [w.copy() for w in teacher.get_weights()]
    s_before = [w.copy() for w in student.get_weights()]

    namespace = {"teacher": teacher, "student": student, "dataset": dataset}
    exec(compile(_example(), "README.md (Use it from Python)", "exec"), namespace)

    history = namespace["distiller"].history.history
    assert set(history) == {"loss", "task", "soft", "hidden"}
    assert all(np.isfinite(v).all() for v in history.values())
    for a, b in zip(t_before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(s_before, student.get_weights()))
    saved = keras.models.load_model(tmp_path / "student.keras")
    np.testing.assert_allclose(saved(images)["logits"], student(images)["logits"], atol=1e-6)
