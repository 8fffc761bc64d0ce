"""Teacher-outputs files (keras_kd/teachers/outputs.py): rows matched by source, and one clear DataError,
naming the file, for each way a file can be wrong for the data. Random embeddings, tiny synthetic data."""
import re
import sys

import numpy as np
import pytest

from keras_kd.data import synthetic
from keras_kd.data.example import DataError
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
