"""The alignment picture's faces: spread over the test split (records come grouped by identity), and drawn
with the predictions made for those same faces, also for records saved before their indices were. And the
mean training shape, read once per data set and settings."""
import numpy as np

from keras_kd.config import Config
from keras_kd.tasks import align


def test_examples_are_spread_over_the_split():
    idx = align.example_indices(933)
    assert len(idx) == align.EXAMPLES and idx[0] == 0 and idx[-1] == 932
    assert np.all(np.diff(idx) > 60)  # the quick preset's test split holds about 15 faces per identity
    assert list(align.example_indices(5)) == [0, 1, 2, 3, 4]


def _plot(tmp_path, monkeypatch, artifacts, true):
    drawn = {}
    monkeypatch.setattr(align.plots, "plot_alignment_examples",
                        lambda images, points, path: drawn.update(images=images, points=points))

    class DS:  # the test split in two batches
        def __iter__(self):
            n = len(true)
            for lo, hi in ((0, n // 2), (n // 2, n)):
                x = np.arange(lo, hi)[:, None, None, None] / 255 * np.ones((1, 4, 4, 3), np.float32)
                yield (Tensor(x), {"has_landmarks": Tensor(np.ones(hi - lo, bool)),
                                   "landmarks": Tensor(true[lo:hi])})
    monkeypatch.setattr(align.pipeline, "make_dataset", lambda *a, **k: DS())
    models = [dict(name="teacher", role="teacher", metrics={"nrmse": 5.0}),
              dict(name="s", role="student", width_divisor=8, metrics={"nrmse": 6.0})]
    paths = align.Align()._examples_plot(artifacts, str(tmp_path), models, "data", Config(image_size=4))
    return paths, drawn


class Tensor:
    def __init__(self, a):
        self.a = a

    def numpy(self):
        return self.a


def test_the_picture_pairs_each_face_with_its_own_predictions(tmp_path, monkeypatch):
    true = np.random.default_rng(0).uniform(size=(100, 5, 2)).astype(np.float32)
    idx = align.example_indices(100)
    arts = {n: {"examples": true[idx] + d, "example_index": idx} for n, d in (("teacher", 0.01), ("s", 0.02))}
    paths, drawn = _plot(tmp_path, monkeypatch, arts, true)
    assert paths and drawn["images"][:, 0, 0, 0].tolist() == list(idx)  # face i has value i
    np.testing.assert_allclose(drawn["points"]["true"], true[idx] * 4)
    for key, pts in drawn["points"].items():
        if key != "true":
            assert np.abs(pts - true[idx] * 4).max() < 0.1


def test_records_without_indices_are_the_first_faces(tmp_path, monkeypatch):
    true = np.random.default_rng(1).uniform(size=(30, 5, 2)).astype(np.float32)
    arts = {n: {"examples": true[:12]} for n in ("teacher", "s")}
    paths, drawn = _plot(tmp_path, monkeypatch, arts, true)
    assert paths
    np.testing.assert_allclose(drawn["points"]["true"], true[:12] * 4)


def test_the_mean_shape_is_read_once_per_data_and_settings(tmp_path, monkeypatch):
    reads = []

    def landmarks(data_dir, split, cfg, limit):
        reads.append((data_dir, cfg.image_size))
        return np.full((3, 5, 2), len(reads), np.float64)
    monkeypatch.setattr(align, "_landmarks", landmarks)
    monkeypatch.setattr(align, "_MEAN_SHAPES", {})
    meta = tmp_path / "meta.json"
    meta.write_text("{}")
    first = align.mean_shape(str(tmp_path), Config(image_size=32))
    first[:] = -1  # a caller changing its copy changes nothing
    assert align.mean_shape(str(tmp_path), Config(image_size=32, lr_init=0.5))[0, 0] == 1  # not an input setting
    assert len(reads) == 1
    assert align.mean_shape(str(tmp_path), Config(image_size=48))[0, 0] == 2
    meta.write_text('{"converted": "again"}')  # the data converted again in the same folder
    assert align.mean_shape(str(tmp_path), Config(image_size=32))[0, 0] == 3
    assert len(reads) == 3
