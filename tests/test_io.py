"""keras_kd.io: atomic writes (a failing writer keeps the old file, leaves no temp file), JSON of numpy
values, sha256 of files."""
import hashlib
import json
import os

import numpy as np
import pytest

from keras_kd import io


def test_failing_writer_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "results.json"
    io.write_json(str(path), {"a": 1})

    def half_then_fail(f):
        f.write('{"a": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.atomic_write(str(path), half_then_fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["results.json"]


def test_replacing_keeps_suffix_and_cleans_up_on_error(tmp_path):
    path = tmp_path / "stage.weights.h5"
    with io.replacing(str(path)) as tmp:
        assert tmp.endswith("stage.weights.h5") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert path.read_bytes() == b"new"
    with pytest.raises(KeyboardInterrupt):
        with io.replacing(str(path)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["stage.weights.h5"]


def test_json_with_numpy_scalars_and_arrays(tmp_path):
    path = tmp_path / "sub" / "x.json"  # the folder is made
    io.write_json(str(path), {"f": np.float32(0.5), "i": np.int64(3), "b": np.bool_(True),
                              "a": np.arange(3), "m": np.eye(2, dtype=np.float32)})
    assert json.loads(path.read_text()) == {"f": 0.5, "i": 3, "b": True, "a": [0, 1, 2],
                                            "m": [[1.0, 0.0], [0.0, 1.0]]}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        io.write_json(str(path), {"x": object()})
    assert json.loads(path.read_text())["i"] == 3 and os.listdir(path.parent) == ["x.json"]


def test_text_bytes_npz_and_copy(tmp_path):
    io.write_text(str(tmp_path / "a.md"), "é\n")
    assert (tmp_path / "a.md").read_text(encoding="utf-8") == "é\n"
    io.write_bytes(str(tmp_path / "b.bin"), b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    io.write_npz(str(tmp_path / "c.npz"), x=np.arange(4), y=np.array(["s"]))
    z = np.load(tmp_path / "c.npz")
    assert z["x"].tolist() == [0, 1, 2, 3] and z["y"].tolist() == ["s"]
    io.copy_file(str(tmp_path / "b.bin"), str(tmp_path / "d" / "b.bin"))
    assert (tmp_path / "d" / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["a.md", "b.bin", "c.npz", "d"]


def test_sha256_file_equals_hashlib(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    path = tmp_path / "w.h5"
    path.write_bytes(data)
    assert io.sha256_file(str(path)) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert io.sha256_file(str(tmp_path / "empty")) == hashlib.sha256(b"").hexdigest()
