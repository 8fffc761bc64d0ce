"""Bad data met during training: one line naming the file, exit code 2, no weights written."""
import os
import shutil

import numpy as np
import pytest

from conftest import PAPER_RECIPE, run_main
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


def _rewrite(shard, records):
    with tf.io.TFRecordWriter(shard) as w:
        for r in records:
            w.write(r)


def _relabelled(raw: bytes, label: int) -> bytes:
    ex = tf.train.Example.FromString(raw)
    ex.features.feature["image/label"].int64_list.value[:] = [label]
    ex.features.feature["image/source"].bytes_list.value[:] = [b"odd/label.png"]
    return ex.SerializeToString()


def test_data_dir_without_records(clean_data, tmp_path):
    data = _copy(clean_data, tmp_path)
    for shard in shard_paths(str(data), "train"):
        os.remove(shard)
    proc = _train(data, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: {data}: meta.json lists train records but no train-*.tfrecord file is there"


def _runner(data, tmp_path, **kw):
    """A smoke-sized Runner on `data`, in process: one /8 stage is trained in seconds, not a whole plan."""
    from keras_kd.config import Config
    from keras_kd.keras import tf as tf_
    from keras_kd.stages import Runner

    cfg = Config(data=str(data), model_dir=str(tmp_path / "runs"), image_size=32, students=(8,), batch_size=16,
                 verbose=0, resnet_blocks=(1, 1, 1, 1), **{**PAPER_RECIPE, "student_epochs": 1, "lr_scratch": 0.05, **kw})
    logs = []
    return Runner(cfg, tf_.distribute.get_strategy(), log=logs.append), logs


def test_label_beyond_the_class_count_names_the_record(clean_data, tmp_path):
    from keras_kd.data.example import DataError

    data = _copy(clean_data, tmp_path)
    shards = shard_paths(str(data), "train")
    shard = shards[0]
    # Every train record: with one shard of four relabelled, a one-epoch run on a loaded machine could end
    # without meeting one (tf.data's interleave order is not fixed), and then nothing is wrong to report.
    for path in shards:
        _rewrite(path, [_relabelled(r.numpy(), 9) for r in tf.data.TFRecordDataset(path)])
    runner, _ = _runner(data, tmp_path)
    with pytest.raises(DataError) as e:
        runner.ensure("classify", "student_d8_label")
    assert str(e.value) == f"{shard}: record 0 (odd/label.png): label 9 outside [0, 4) (num_classes of meta.json)"
    assert not list((tmp_path / "runs").glob("classify/stages/*.weights.h5"))


def test_skip_corrupt_counts_reports_and_trains_on_the_rest(clean_data, tmp_path):
    data = _copy(clean_data, tmp_path)
    shards = shard_paths(str(data), "train")
    records = [r.numpy() for r in tf.data.TFRecordDataset(shards[0])]
    bad = make_example(b"\xff\xd8 not really a jpeg", 40, 40, 0, "bad/face.jpg").SerializeToString()
    _rewrite(shards[0], records[:2] + [bad] + records[2:])
    with open(shards[1], "r+b") as f:
        f.truncate(os.path.getsize(shards[1]) - 50)
    runner, logs = _runner(data, tmp_path, skip_corrupt=True)
    record = runner.ensure("classify", "student_d8_label")
    assert f"[data] {data}: --skip_corrupt: skipping 2 bad record(s) or shard tail(s)" in logs[0]
    assert logs[1] == f"[data]   {shards[0]}: record 2 (bad/face.jpg): image does not decode"
    assert logs[2].startswith(f"[data]   {shards[1]}: corrupt or truncated record after ")
    assert record["skipped_problems"] == 2 and np.isfinite(record["history"]["loss"]).all()
    assert (tmp_path / "runs" / "classify" / "stages" / "student_d8_label.weights.h5").exists()


def test_nan_loss_stops_the_stage_naming_it_and_saves_nothing(clean_data, tmp_path):
    from keras_kd.stages import StageError

    runner, _ = _runner(clean_data, tmp_path, lr_scratch=1e30, student_epochs=3)
    with pytest.raises(StageError, match=r"^stage classify/student_d8_label: loss became (nan|inf) at epoch \d, "
                                         r"step \d+/\d+; weights not saved"):
        runner.ensure("classify", "student_d8_label")
    assert not list((tmp_path / "runs").glob("classify/stages/*"))
    backup = tmp_path / "runs" / "classify" / "backup" / "student_d8_label" / "chief"
    if backup.exists():  # the last good epoch's backup is kept; a NaN state is never backed up
        ckpt = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(backup)))
        floats = [ckpt.get_tensor(k) for k, dtype in ckpt.get_variable_to_dtype_map().items() if dtype.is_floating]
        assert floats and all(np.isfinite(v).all() for v in floats)


def test_multi_worker_without_tf_config(tmp_path):
    proc = run_main("--task=classify", "--preset=smoke", f"--model_dir={tmp_path}", "--strategy=multi_worker")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --strategy=multi_worker needs TF_CONFIG")


def test_landmarks_outside_the_image_in_records_are_refused(clean_data, tmp_path):
    """The converter refuses them (test_layouts); records written by other tools are checked on reading."""
    from keras_kd.config import Config
    from keras_kd.data.example import DataError
    from keras_kd.tasks.align import mean_shape

    data = _copy(clean_data, tmp_path)
    shard = shard_paths(str(data), "train")[0]
    records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
    ex = tf.train.Example.FromString(records[1])
    ex.features.feature["image/landmarks"].float_list.value[0] = 400.0  # x of a 40-pixel-wide image
    _rewrite(shard, records[:1] + [ex.SerializeToString()] + records[2:])
    source = ex.features.feature["image/source"].bytes_list.value[0].decode()
    with pytest.raises(DataError, match=f"^{data}: train image {source} has landmarks outside the image"):
        mean_shape(str(data), Config(image_size=32))


def test_a_task_folder_given_as_model_dir_is_refused(tmp_path):
    (tmp_path / "align" / "stages").mkdir(parents=True)
    proc = run_main("--task=classify", "--preset=smoke", f"--model_dir={tmp_path}/align")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}/align: this is one task's output folder (it holds stages/), not a model_dir; "
        f"pass its parent: --model_dir={tmp_path}")
