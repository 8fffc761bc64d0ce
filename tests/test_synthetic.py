"""The synthetic faces: deterministic, exact landmarks, identities that differ but overlap."""
import json
import os

import numpy as np
import pytest

from keras_kd.data import synthetic
from keras_kd.keras import tf

SIZE = 64


@pytest.fixture(scope="module")
def faces():
    """(identity, image, landmarks) of 12 identities x 20 images."""
    params = synthetic.identity_params(12, seed=3)
    return [(i, *synthetic.render_face(p, np.random.default_rng([3, i, j]), SIZE))
            for i, p in enumerate(params) for j in range(20)]


def test_shapes_and_dtypes(faces):
    for _, img, lm in faces:
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        assert lm.shape == (5, 2) and lm.dtype == np.float32


def test_deterministic_by_seed():
    a, b, c = (synthetic.identity_params(5, s) for s in (1, 1, 2))
    img_a, lm_a = synthetic.render_face(a[4], np.random.default_rng(9), SIZE)
    img_b, lm_b = synthetic.render_face(b[4], np.random.default_rng(9), SIZE)
    img_c, _ = synthetic.render_face(c[4], np.random.default_rng(9), SIZE)
    np.testing.assert_array_equal(img_a, img_b)
    np.testing.assert_array_equal(lm_a, lm_b)
    assert np.abs(img_a.astype(int) - img_c).mean() > 5
    img_d, _ = synthetic.render_face(a[4], np.random.default_rng(10), SIZE)
    assert np.abs(img_a.astype(int) - img_d).mean() > 5


def test_landmarks_inside_and_ordered(faces):
    lms = np.stack([lm for _, _, lm in faces])
    assert (lms >= 0.5).all() and (lms <= SIZE - 0.5).all()  # continuous coordinates: centres at i + 0.5
    left_eye, right_eye, nose, left_mouth, right_mouth = lms.transpose(1, 0, 2)
    assert (left_eye[:, 0] < right_eye[:, 0]).all()
    assert (left_mouth[:, 0] < right_mouth[:, 0]).all()
    eyes_y, mouth_y = (left_eye[:, 1] + right_eye[:, 1]) / 2, (left_mouth[:, 1] + right_mouth[:, 1]) / 2
    assert ((eyes_y < nose[:, 1]) & (nose[:, 1] < mouth_y)).all()


def test_eye_landmark_is_on_the_eye(faces):
    """The pixel at an eye landmark (pupil/iris, or a closed lid) is darker than the cheek below it."""
    darker = []
    for _, img, lm in faces:
        lum = img.astype(float).mean(-1)
        for eye, mouth in ((lm[0], lm[3]), (lm[1], lm[4])):
            ex, ey = np.floor(eye).astype(int)  # pixel i spans [i, i + 1)
            cx, cy = np.floor((eye + mouth) / 2).astype(int)
            darker.append(lum[ey, ex] < lum[cy, cx] - 20)
    assert np.mean(darker) > 0.85


def test_identities_differ_but_are_not_trivial(faces):
    """On raw pixels, images of one identity are only a little closer than images of different identities:
    a nearest-neighbour match beats chance (1/12) clearly, yet is far from perfect."""
    labels = np.array([i for i, _, _ in faces])
    x = np.stack([img[::4, ::4].astype(float).ravel() for _, img, _ in faces])
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    same, other = labels[:, None] == labels[None], ~np.eye(len(x), dtype=bool)
    assert dist[same & other].mean() < dist[~same].mean()
    nearest = np.where(other, dist, np.inf).argmin(1)
    assert 2 / 12 < (labels[nearest] == labels).mean() < 0.6
    params = synthetic.identity_params(12, seed=3)
    assert len({round(p["eye_dx"], 6) for p in params}) == 12


def test_items_render_what_render_face_renders():
    items = synthetic.synthetic_items(3, 4, 40, seed=5)
    assert [it.source for it in items[:2]] == ["synthetic/id0000/0000.png", "synthetic/id0000/0001.png"]
    assert sorted({it.label for it in items}) == [0, 1, 2] and len(items) == 12
    it = items[6]  # identity 1, image 2
    img, lm = synthetic.render_face(synthetic.identity_params(3, 5)[1], np.random.default_rng([5, 1, 2]), 40)
    np.testing.assert_array_equal(tf.io.decode_png(it.load()).numpy(), img)
    np.testing.assert_array_equal(it.landmarks, lm)
    assert it.load() == synthetic.synthetic_items(3, 4, 40, seed=5)[6].load()


def test_write_synthetic(tmp_path):
    meta = synthetic.write_synthetic(str(tmp_path), 3, 5, 32, seed=1, log=lambda *_: None)
    assert meta["name"] == "synthetic-faces-v2-3x5-32px-seed1" and meta["synthetic"] and meta["has_landmarks"]
    assert sum(meta["splits"].values()) == 15 and meta["num_classes"] == 3 and meta["image_size"] == [32, 32]
    with open(os.path.join(tmp_path, "meta.json")) as f:
        assert json.load(f) == meta
