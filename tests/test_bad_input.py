"""Bad data met during training: one line naming the file, exit code 2, no weights written."""
import os
import shutil

import pytest

from conftest import run_main
from keras_kd.data.example import make_example, shard_paths
from keras_kd.data.synthetic import write_synthetic
from keras_kd.keras import tf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_synthetic(str(d), num_identities=4, images_per_identity=10, image_size=40, seed=0,
                    records_per_shard=8, log=lambda *_: None)
    return d


def _copy(src, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst


def _train(data, tmp_path):
    return run_main("--task=classify", "--preset=smoke", f"--data={data}", f"--model_dir={tmp_path}/runs",
                    "--cls_inits=label", "--verbose=0", "--noexport")


def test_truncated_record_names_the_shard(clean_data, tmp_path):
    data = _copy(clean_data, tmp_path)
    shard = shard_paths(str(data), "train")[1]
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 50)
    proc = _train(data, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {shard}: corrupt or truncated record"), last
    assert not list((tmp_path / "runs").glob("classify/stages/*.weights.h5"))


def test_undecodable_image_names_shard_and_source(clean_data, tmp_path):
    data = _copy(clean_data, tmp_path)
    shard = shard_paths(str(data), "train")[0]
    records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
    bad = make_example(b"\xff\xd8 not really a jpeg", 40, 40, 0, "bad/face.jpg").SerializeToString()
    with tf.io.TFRecordWriter(shard) as w:
        for r in records[:2] + [bad] + records[2:]:
            w.write(r)
    proc = _train(data, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: {shard}: record 2 (bad/face.jpg): image does not decode", last


def test_data_dir_without_meta(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _train(tmp_path / "empty", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}/empty/meta.json: missing")
