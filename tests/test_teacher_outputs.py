"""Teacher-outputs files (keras_kd/teachers/outputs.py): rows matched by source, and one clear DataError,
naming the file, for each way a file can be wrong for the data. Random embeddings, tiny synthetic data."""
import re
import sys

import numpy as np
import pytest

from keras_kd.data import pipeline, synthetic
from keras_kd.data.example import DataError
from keras_kd.keras import tf
from keras_kd.teachers import outputs

WIDTH = 8


def _write(d, seed=0):
    synthetic.write_synthetic(str(d), 3, 5, 24, seed=seed, log=lambda *_: None)
    return str(d)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = _write(tmp_path_factory.mktemp("synthetic"))
    train, test = outputs.data_records(d, "train"), outputs.data_records(d, "test")
    assert len(train["source"]) and len(test["source"])
    sources = np.concatenate([train["source"], test["source"]]).astype(str)
    splits = np.array(["train"] * len(train["source"]) + ["test"] * len(test["source"]))
    emb = np.random.default_rng(0).normal(size=(len(sources), WIDTH)).astype(np.float32)
    return {"dir": d, "train": train, "test": test, "sources": sources, "splits": splits, "emb": emb}


def _save(path, data, order=None, **out):
    order = np.arange(len(data["sources"])) if order is None else np.asarray(order)
    outs = {"embedding": data["emb"][order], **out}
    outputs.save(str(path), data["sources"][order], data["splits"][order], outs, data["dir"], teacher="random")
    return str(path)


def test_rows_are_matched_by_source_whatever_the_file_order(tmp_path, data):
    order = np.random.default_rng(1).permutation(len(data["sources"]))
    path = _save(tmp_path / "t.npz", data, order)
    cache = outputs.load(path, data["dir"], "train")
    n_train = len(data["train"]["source"])
    assert list(cache.sources) == [s.encode() for s in data["train"]["source"]]
    np.testing.assert_array_equal(cache.outputs["embedding"], data["emb"][:n_train])  # the data's order
    np.testing.assert_array_equal(cache.outputs["hidden"], cache.outputs["embedding"])  # K defaults to it
    assert cache.key["teacher"] == "random" and cache.key["teacher_outputs"] == str(tmp_path / "t.npz")
    ev = outputs.eval_outputs(path, data["dir"])
    np.testing.assert_array_equal(ev["embedding"], data["emb"][n_train:])
    np.testing.assert_array_equal(ev["label"], data["test"]["label"])
    assert list(ev["source"]) == [s.encode() for s in data["test"]["source"]]


def test_a_file_without_test_records_cannot_evaluate_the_teacher(tmp_path, data):
    train = np.flatnonzero(data["splits"] == "train")
    path = _save(tmp_path / "t.npz", data, train)
    assert len(outputs.load(path, data["dir"])) == len(train)
    assert outputs.eval_outputs(path, data["dir"]) is None


def test_a_missing_train_record_names_the_file_and_the_first_missing_source(tmp_path, data):
    keep = np.arange(len(data["sources"]))
    keep = np.delete(keep, [1, 2])  # the second and third train records
    path = _save(tmp_path / "t.npz", data, keep)
    n = len(data["train"]["source"])
    first = data["train"]["source"][1]
    with pytest.raises(DataError, match=rf"t\.npz: 2 of the {n} train records of .* have no teacher output "
                                        rf"\(first: {re.escape(first)}\)"):
        outputs.load(path, data["dir"])


def test_a_missing_test_record_is_named_too(tmp_path, data):
    keep = np.flatnonzero(data["sources"] != data["test"]["source"][0])
    path = _save(tmp_path / "t.npz", data, keep)
    outputs.load(path, data["dir"])  # training needs only the train records
    with pytest.raises(DataError, match=rf"test records of .* \(first: {re.escape(data['test']['source'][0])}\)"):
        outputs.eval_outputs(path, data["dir"])


def test_a_file_for_another_data_set_is_refused(tmp_path, data):
    other = _write(tmp_path / "other", seed=1)  # other faces, other meta.json
    path = _save(tmp_path / "t.npz", data)
    for call in (outputs.load, outputs.eval_outputs):
        with pytest.raises(DataError, match=r"t\.npz: made for the data 'synthetic-faces.*write it again"):
            call(path, other)


def test_a_nan_row_is_refused_naming_its_source(tmp_path, data):
    emb = data["emb"].copy()
    emb[3, 1] = np.nan
    path = _save(tmp_path / "t.npz", {**data, "emb": emb})
    with pytest.raises(DataError, match=rf"t\.npz: out_embedding holds NaN or infinite values \(row 3, "
                                        rf"{re.escape(data['sources'][3])}\)"):
        outputs.load(path, data["dir"])


def test_landmarks_of_the_wrong_shape_are_refused(tmp_path, data):
    path = _save(tmp_path / "t.npz", data, landmarks=np.zeros((len(data["sources"]), 4, 2)))
    with pytest.raises(DataError, match=r"t\.npz: out_landmarks has shape \[\d+, 4, 2\]; expected \[N, 5, 2\]"):
        outputs.load(path, data["dir"])
    path = _save(tmp_path / "ok.npz", data, landmarks=np.full((len(data["sources"]), 5, 2), 0.5))
    assert outputs.load(path, data["dir"]).outputs["landmarks"].shape[1:] == (5, 2)


def test_unknown_outputs_are_refused_when_saving(tmp_path, data):
    with pytest.raises(ValueError, match=r"unknown teacher outputs \['features'\]"):
        _save(tmp_path / "t.npz", data, features=data["emb"])


def test_flipped_views_reach_the_training_cache_and_not_the_evaluation(tmp_path, data):
    flip = data["emb"][:, ::-1].copy()
    path = _save(tmp_path / "t.npz", data, embedding_flip=flip)
    cache = outputs.load(path, data["dir"])
    n_train = len(data["train"]["source"])
    assert set(cache.outputs) == {"embedding", "embedding_flip", "hidden", "hidden_flip"}
    np.testing.assert_array_equal(cache.outputs["hidden_flip"], flip[:n_train])  # K's flip is the embedding's
    assert set(outputs.eval_outputs(path, data["dir"])) == {"embedding", "hidden", "label", "source"}


def test_flipped_views_must_match_their_outputs(tmp_path, data):
    n = len(data["sources"])
    path = _save(tmp_path / "t.npz", data, embedding_flip=np.zeros((n, WIDTH + 1)))
    with pytest.raises(DataError, match=rf"t\.npz: out_embedding_flip has shape \[{n}, 9\], out_embedding \[{n}, 8\]"):
        outputs.load(path, data["dir"])
    path = _save(tmp_path / "some.npz", data, embedding_flip=data["emb"], logits=np.zeros((n, 3)))
    with pytest.raises(DataError, match=r"some\.npz: flipped views for some outputs only \(none for out_logits\)"):
        outputs.load(path, data["dir"])
    path = _save(tmp_path / "alone.npz", data, logits_flip=np.zeros((n, 3)))
    with pytest.raises(DataError, match=r"alone\.npz: out_logits_flip without out_logits"):
        outputs.load(path, data["dir"])


def test_a_flipped_training_image_gets_the_teachers_outputs_of_the_flipped_view():
    """A file with flipped views, in training (pipeline._crop_flip on a horizontal ramp: the crop is flipped
    when its first column is its brightest)."""
    cfg = pipeline.InputConfig(image_size=32, batch_size=1)
    ramp = np.tile(np.linspace(0, 255, cfg.resize_size).astype(np.uint8)[None, :, None], (cfg.resize_size, 1, 3))
    ex = {"image": tf.constant(ramp), "landmarks": tf.zeros([5, 2]), "label": tf.constant(0),
          "has_landmarks": tf.constant(True), "source": tf.constant(b"a"),
          "teacher": {"logits": tf.constant([1.0, 0.0]), "logits_flip": tf.constant([0.0, 1.0])}}
    tf.random.set_seed(0)
    seen = set()
    for _ in range(24):
        image, targets = pipeline._crop_flip(ex, cfg, training=True)
        flipped = bool(image[0, 0, 0] > image[0, -1, 0])
        assert set(targets["teacher"]) == {"logits"}
        assert targets["teacher"]["logits"].numpy().tolist() == ([0.0, 1.0] if flipped else [1.0, 0.0])
        seen.add(flipped)
    assert seen == {True, False}
    _, targets = pipeline._crop_flip(ex, cfg, training=False)  # evaluation: the un-flipped view, no flip key
    assert set(targets["teacher"]) == {"logits"} and targets["teacher"]["logits"].numpy().tolist() == [1.0, 0.0]


@pytest.mark.parametrize("kind", ["text", "npy", "other_npz", "truncated"])
def test_a_file_that_is_not_one_is_refused(tmp_path, data, kind):
    path = tmp_path / f"bad.{kind}"
    if kind == "text":
        path.write_text("source,embedding\n")
    elif kind == "npy":
        np.save(open(path, "wb"), data["emb"])
    elif kind == "other_npz":
        np.savez(open(path, "wb"), embedding=data["emb"])
    else:
        good = _save(tmp_path / "good.npz", data)
        blob = open(good, "rb").read()
        path.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(DataError, match=rf"bad\.{kind}: not a teacher-outputs file \("):
        outputs.load(str(path), data["dir"])


def test_a_missing_file_is_named(tmp_path, data):
    with pytest.raises(DataError, match=r"nope\.npz: no such teacher-outputs file"):
        outputs.load(str(tmp_path / "nope.npz"), data["dir"])


def test_the_dlib_writer_without_dlib_says_what_to_install(tmp_path, monkeypatch, capsys):
    from keras_kd.teachers import dlib as dlib_teacher  # imports dlib only when it runs
    monkeypatch.setitem(sys.modules, "dlib", None)  # as if not installed
    assert dlib_teacher.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("keras_kd.teachers.dlib needs the optional teachers: "
                                       "pip install -r requirements-teachers.txt\n")
