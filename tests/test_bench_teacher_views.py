"""bench.teacher_views: the views it compares are the pipeline's (centre crop; random crops and flips of the
resized image), and "another image" is always another person's."""
import numpy as np
import pytest

from bench import teacher_views
from keras_kd.data import pipeline


def test_centre_crop_and_training_views_are_cut_from_the_resized_image():
    cfg = pipeline.InputConfig(image_size=48, batch_size=1)
    r, margin = cfg.resize_size, cfg.resize_size - 48
    resized = np.random.default_rng(0).integers(0, 256, (3, r, r, 3)).astype(np.uint8)
    centre, views = teacher_views.views(resized, cfg, 5)
    pixels = resized.astype(np.float32) / 255.0  # what the pipeline feeds the model
    c = margin // 2
    np.testing.assert_array_equal(centre, pixels[:, c:c + 48, c:c + 48])
    assert len(views) == 5 and all(v.shape == (3, 48, 48, 3) for v in views)
    for v in views:
        for i in range(3):  # each view is one of the crops of its own image, maybe mirrored
            own = [pixels[i, y:y + 48, x:x + 48] for y in range(margin + 1) for x in range(margin + 1)]
            assert any(np.array_equal(v[i], w) or np.array_equal(v[i], w[:, ::-1]) for w in own)


def test_another_image_is_of_another_identity():
    labels = np.array([0, 0, 0, 1, 1, 2])
    other = teacher_views._another_identity(labels)
    assert list(other) == [3, 3, 3, 5, 5, 0]
    assert np.all(labels[other] != labels)


def test_relative_distance_is_per_row_and_normalized_by_the_view():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [0.0, 2.0]])
    assert teacher_views._relative(a, b) == 0.25  # (0.5 + 0) / 2


def test_a_model_dir_without_trained_teachers_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        teacher_views.main([f"--model_dir={tmp_path}"])
    assert str(tmp_path) in str(e.value) and "no trained teacher" in str(e.value)
