"""Teacher-output cache: cached == online targets on un-augmented data, staleness, Distiller, names.

The end-to-end run (main.py --teacher_cache=disk, the cached twin of Ours beside the online one) is in
test_main.py, where it reuses the smoke stages trained there.
"""
import json
import os

import numpy as np
import pytest

from keras_kd import results
from keras_kd.config import Config
from keras_kd.data import pipeline, synthetic
from keras_kd.distill import losses, teacher_cache
from keras_kd.distill.distiller import Distiller
from keras_kd.keras import keras, tf
from keras_kd.tasks import TASKS

SIZE, CLASSES = 32, 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    synthetic.write_synthetic(str(d), CLASSES, 6, 40, seed=0, log=lambda *_: None)
    return str(d)


def _net(size=SIZE, width=8, name="teacher"):
    """A tiny network with the outputs a Distiller reads (ResNet-50's would cost seconds of tracing each)."""
    x = keras.Input((size, size, 3), name="image")
    h = keras.layers.Conv2D(width, 3, 2, activation="relu", name="conv")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    hidden = keras.layers.GlobalAveragePooling2D(name="hidden")(h)
    return keras.Model(x, {"logits": keras.layers.Dense(CLASSES, name="logits")(hidden), "hidden": hidden,
                           "hint": h}, name=name)


def _teacher(size=SIZE, seed=0):
    keras.utils.set_random_seed(seed)
    t = _net(size)
    kernel = t.get_layer("logits").kernel
    kernel.assign(kernel * 30.0)  # sharper than a fresh head: the soft term is not trivially small
    return t


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    t = _teacher()
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.weights.h5")
    t.save_weights(path)
    return t, path


def _cfg(size=SIZE, batch=8, **kw):
    return pipeline.InputConfig(image_size=size, batch_size=batch, **kw)


def _loader(path, size=SIZE):
    def load():
        m = _net(size)
        m.load_weights(path)
        return m
    return load


def _never():
    raise AssertionError("the teacher ran although a valid cache was there")


def test_cached_targets_equal_online_teacher_outputs_on_unaugmented_data(data_dir, teacher):
    model, path = teacher
    logs = []
    cache = teacher_cache.get("memory", path, data_dir, _cfg(), _loader(path), log=logs.append)
    assert len(cache) == 18 and "computed" in logs[0] and not os.path.exists(os.path.join(data_dir, "teacher_cache"))
    # Training batches (shuffled, repeated), un-augmented: the cached rows must be the teacher's outputs.
    ds = pipeline.make_dataset(data_dir, "train", _cfg(augment=False), training=True, teacher_outputs=cache)
    n = 0
    for images, y in ds.take(4):
        assert set(y["teacher"]) == {"logits", "hidden"}
        online = model(images, training=False)
        for k in ("logits", "hidden"):
            np.testing.assert_allclose(y["teacher"][k].numpy(), online[k].numpy(), rtol=1e-5, atol=1e-5)
        n += len(images)
    assert n == 32  # more than one epoch of 18: every record found its row, across epochs


def test_disk_cache_is_reused_and_a_stale_one_rebuilt(data_dir, teacher, tmp_path):
    path = str(tmp_path / "teacher.weights.h5")  # its own copy: this test overwrites it
    teacher[0].save_weights(path)
    logs = []
    c1 = teacher_cache.get("disk", path, data_dir, _cfg(), _loader(path), log=logs.append)
    folder = os.path.join(data_dir, "teacher_cache")
    assert c1.path and os.path.dirname(c1.path) == folder and os.listdir(folder) == [os.path.basename(c1.path)]
    # A new run (empty memo): read back from disk, the teacher never runs.
    logs.clear()
    c2 = teacher_cache.get("disk", path, data_dir, _cfg(), _never, log=logs.append)
    assert any("using" in s for s in logs) and c2.path == c1.path
    np.testing.assert_array_equal(c1.outputs["logits"], c2.outputs["logits"])
    assert list(c1.sources) == list(c2.sources)

    # The teacher's weights change (retrained under the same file name): stale, reported, rebuilt.
    _teacher(seed=1).save_weights(path)
    logs.clear()
    c3 = teacher_cache.get("disk", path, data_dir, _cfg(), _loader(path), log=logs.append)
    stale = [s for s in logs if "stale" in s]
    assert stale and "teacher_weights_sha256" in stale[0] and "removed" in stale[0], logs
    assert c3.path != c1.path and not os.path.exists(c1.path) and os.path.exists(c3.path)
    assert not np.allclose(c3.outputs["logits"], c1.outputs["logits"])

    # Another input size: another key, the old file is reported stale too.
    logs.clear()
    c4 = teacher_cache.get("disk", path, data_dir, _cfg(36), _loader(path, 36), log=logs.append)
    stale = [s for s in logs if "stale" in s]
    assert stale and "image_size" in stale[0] and c4.path != c3.path and not os.path.exists(c3.path)

    # A file whose stored key does not match its name (copied over, edited) is never trusted.
    with np.load(c4.path) as z:
        arrays = dict(z)
    key = json.loads(str(arrays["key"]))
    key["image_size"] = 99
    arrays["key"] = np.array(json.dumps(key))
    np.savez(c4.path, **arrays)
    logs.clear()
    teacher_cache.get("disk", path, data_dir, _cfg(36), _loader(path, 36), log=logs.append)
    assert any("stale" in s and "image_size" in s for s in logs) and any("computed" in s for s in logs)


def _ce(y, s):
    return losses.label_ce(y["label"], s["logits"])


def test_distiller_loss_with_cached_targets_equals_online(data_dir, teacher):
    model, path = teacher
    cache = teacher_cache.get("memory", path, data_dir, _cfg(), _loader(path), log=lambda *_: None)
    keras.utils.set_random_seed(3)
    student = _net(width=4, name="student")
    d = Distiller(student, model, task_loss=_ce, targets=[("soft", 1.0), ("hidden", 0.5)])
    ds = pipeline.make_dataset(data_dir, "train", _cfg(augment=False), training=True, teacher_outputs=cache)
    images, y = next(iter(ds))
    online_y = {k: v for k, v in y.items() if k != "teacher"}
    for training in (False, True):
        cached = d._loss(images, y, training=training)
        online = d._loss(images, online_y, training=training)
        assert float(online) > 0.1
        np.testing.assert_allclose(cached.numpy(), online.numpy(), rtol=1e-5)


def test_cached_targets_under_a_strategy(data_dir, teacher):
    """distribute_datasets_from_function + Distiller.fit: the teacher outputs travel with each replica's batch."""
    model, path = teacher
    cache = teacher_cache.get("memory", path, data_dir, _cfg(), _loader(path), log=lambda *_: None)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        keras.utils.set_random_seed(3)
        student = _net(width=4, name="student")
        teacher = _loader(path)()
        d = Distiller(student, teacher, task_loss=_ce, targets=[("soft", 1.0)])
        d.compile(keras.optimizers.SGD(0.01))
    ds = strategy.distribute_datasets_from_function(lambda ctx: pipeline.make_dataset(
        data_dir, "train", _cfg(), training=True, input_context=ctx, teacher_outputs=cache))
    h = d.fit(ds, epochs=1, steps_per_epoch=2, verbose=0).history
    assert np.isfinite(h["loss"][0]) and h["soft"][0] > 0


def test_cached_stages_are_named_apart_from_online_ones():
    cfg = Config(students=(8,), teacher_cache="memory")
    plans = {t: TASKS[t].plan(cfg) for t in ("classify", "align")}
    lookup = lambda r: {s.name: s for s in plans[r[0]]}.get(r[1])  # noqa: E731
    keys_of = lambda task: TASKS[task].cacheable_outputs(cfg)  # noqa: E731
    cls = {s.name: s for s in teacher_cache.cached_names(plans["classify"], "memory", lookup, keys_of)}
    assert {"teacher", "student_d8_label", "student_d8_label_soft_tc", "student_d8_scratch_soft_tc",
            "student_d8_fitnet_hint", "student_d8_fitnet_soft_tc", "student_d8_select",
            "student_d8_select_soft_tc"} == set(cls)
    assert cls["student_d8_select_soft_tc"].init_from == ("classify", "student_d8_select")  # labels only: shared
    assert cls["student_d8_fitnet_soft_tc"].init_from == ("classify", "student_d8_fitnet_hint")  # hint: online
    assert cls["student_d8_label_soft_tc"].teacher == ("classify", "teacher")
    al = {s.name: s for s in teacher_cache.cached_names(plans["align"], "memory", lookup, keys_of)}
    assert "student_d8_pretrain_a0b0" in al  # no target: shared
    assert "student_d8_pretrain_a1b0_tc" in al
    assert al["student_d8_distill_a1b0_tc"].init_from == ("classify", "student_d8_label_soft_tc")
    assert al["student_d8_distill_a0b0_tc"].init_from == ("classify", "student_d8_label_soft_tc")  # its history
    assert al["student_d8_distill_a1b0_tc"].teacher == ("align", "teacher")
    assert teacher_cache.cached_names(plans["align"], "off", lookup, keys_of) == plans["align"]


@pytest.mark.parametrize("head, cached", [("spatial", False), ("heatmap", False), ("pooled", True)])
def test_alignment_k_is_cached_only_where_a_crop_does_not_move_it(head, cached):
    """The spatial and heatmap heads' K is a map of the crop: the centre crop's K is not the shifted, flipped
    view's, so a β stage trains online (not named _tc) unless its history holds the cache."""
    cfg = Config(students=(8,), teacher_cache="memory", landmark_head=head)
    plans = {t: TASKS[t].plan(cfg) for t in ("classify", "align")}
    lookup = lambda r: {s.name: s for s in plans[r[0]]}.get(r[1])  # noqa: E731
    keys_of = lambda task: TASKS[task].cacheable_outputs(cfg)  # noqa: E731
    al = {s.name for s in teacher_cache.cached_names(plans["align"], "memory", lookup, keys_of)}
    assert ("student_d8_pretrain_a0b1_tc" in al) is cached
    assert ("student_d8_pretrain_a0b1" in al) is not cached
    assert "student_d8_pretrain_a1b0_tc" in al  # the logits: cached with every head
    assert "student_d8_distill_a0b1_tc" in al   # starts from the cached classification student


def test_results_md_compares_cached_and_online_twins(tmp_path):
    def rec(name, top1, secs, **kw):
        return {"name": name, "role": "student", "width_divisor": 8, "init": "label", "targets": ["soft"],
                "alpha": 1.0, "beta": 0.0, "params": 1, "flops": 1, "metrics": {"top1": top1},
                "train_seconds": secs, **kw}
    data = {"task": "classify", "data": "d", "preset": "smoke", "seed": 0,
            "models": [rec("student_d8_label_soft", 0.5, 30.0),
                       rec("student_d8_label_soft_tc", 0.48, 12.0, teacher_cache="memory")]}
    md = results.write_markdown(data, str(tmp_path / "results.md"))
    assert "## Teacher cache" in md
    assert "| student_d8_label_soft | 50.00 / 48.00 | 0.40 |" in md
