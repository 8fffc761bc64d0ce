"""The val split: carved from the train shards (by image, or by identity when the data was split so), the
curves `fit` draws on it, the record's val metrics, and the best student chosen on it, not on the test split.
"""
import json
import os

import pytest

from keras_kd import plots, results
from keras_kd.config import Config
from keras_kd.data import pipeline, synthetic
from keras_kd.data.example import DataError, parse_example, read_meta, shard_paths
from keras_kd.keras import tf
from keras_kd.stages import Runner, StageError
from keras_kd.tasks import TASKS


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    synthetic.write_synthetic(str(d), 6, 20, 40, seed=0, log=lambda *_: None)
    return str(d)


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory):
    """Split by identity, as verification data of unseen people is."""
    d = tmp_path_factory.mktemp("by_identity")
    synthetic.write_synthetic(str(d), 20, 6, 40, seed=0, split_by="identity", log=lambda *_: None)
    return str(d)


def _cfg(val_fraction, **kw):
    return pipeline.InputConfig(image_size=32, batch_size=8, val_fraction=val_fraction, cache="off", **kw)


def _sources(data_dir, split, cfg):
    """(source, label) of every record of a split, as evaluation batches carry them."""
    out = []
    for _, t in pipeline.make_dataset(data_dir, split, cfg, training=False):
        out += list(zip([s.decode() for s in t["source"].numpy()], t["label"].numpy().tolist()))
    return out


def _train_shards(data_dir):
    return {parse_example(r)["source"].numpy().decode() for r in tf.data.TFRecordDataset(shard_paths(data_dir, "train"))}


def test_val_is_carved_from_train_disjoint_and_complete_and_the_counts_say_so(data_dir):
    cfg = _cfg(0.25)
    train, val = _sources(data_dir, "train", cfg), _sources(data_dir, "val", cfg)
    train_src, val_src = {s for s, _ in train}, {s for s, _ in val}
    assert val_src and not train_src & val_src
    assert train_src | val_src == _train_shards(data_dir)          # nothing lost, nothing from the test split
    n = len(train_src) + len(val_src)
    assert 0.1 * n < len(val_src) < 0.4 * n                       # a hash below 0.25, not an exact quarter
    counts = pipeline.split_counts(data_dir, cfg)
    assert (counts["train"], counts["val"]) == (len(train), len(val))
    # Off: train is the whole train split, as before the carve, and there is no val split.
    assert {s for s, _ in _sources(data_dir, "train", _cfg(0.0))} == train_src | val_src
    with pytest.raises(ValueError, match="no val split"):
        pipeline.make_dataset(data_dir, "val", _cfg(0.0), training=False)


def test_the_carve_depends_on_the_data_not_the_run_seed_and_is_the_same_every_time(data_dir):
    a = _sources(data_dir, "val", _cfg(0.25, seed=0))
    b = _sources(data_dir, "val", _cfg(0.25, seed=7))
    assert a == b
    assert {s for s, _ in _sources(data_dir, "val", _cfg(0.4))} > {s for s, _ in a}  # a larger fraction adds


def test_training_batches_never_hold_a_val_image(data_dir):
    cfg = _cfg(0.25)
    val = {s for s, _ in _sources(data_dir, "val", cfg)}
    # Training batches carry no file names; a stand-in for the teacher cache (called with each record's
    # source, as the real one is) brings them along.
    ds = pipeline.make_dataset(data_dir, "train", cfg, training=True, teacher_outputs=lambda src: {"src": src})
    seen = set()
    # Training repeats, then shuffles with a buffer larger than the data: draws are close to uniform, so 60
    # batches (480 draws of 70 images) miss some image in up to 7 % of runs (the suite of c742479 met one);
    # 250 batches (2,000 draws) in 2e-11.
    for _, t in ds.take(250):
        seen.update(s.decode() for s in t["teacher"]["src"].numpy())
    assert seen and not seen & val
    assert seen == _train_shards(data_dir) - val                  # many epochs' draws: every train image


def test_the_teacher_cache_serves_the_val_images_too(data_dir):
    """The val loss compares with the teacher as the train loss does: the cache holds the val records."""
    from keras_kd.distill import teacher_cache
    from keras_kd.models import resnet
    cfg = _cfg(0.25)
    cache = teacher_cache.compute(resnet.build_model(8, 32, 6, name="t"), data_dir, cfg, key={})
    assert len(cache) == len(_train_shards(data_dir))
    batches = list(pipeline.make_dataset(data_dir, "val", cfg, training=False, teacher_outputs=cache))
    assert sum(len(t["teacher"]["logits"]) for _, t in batches) == pipeline.split_counts(data_dir, cfg)["val"]


def test_by_identity_when_the_data_was_split_by_identity(identity_dir):
    cfg = _cfg(0.25)
    train_ids = {l for _, l in _sources(identity_dir, "train", cfg)}
    val_ids = {l for _, l in _sources(identity_dir, "val", cfg)}
    assert val_ids and train_ids and not train_ids & val_ids
    counts = pipeline.split_counts(identity_dir, cfg)
    assert (counts["train_ids"], counts["val_ids"]) == (len(train_ids), len(val_ids))


def test_the_val_split_is_capped_at_a_few_hundred_images(data_dir, monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_VAL_IMAGES", 5)
    n_train = read_meta(data_dir)["splits"]["train"]
    assert pipeline.val_rule(data_dir, 0.5).fraction == pytest.approx(5 / n_train)
    assert pipeline.val_rule(data_dir, 0.01).fraction == 0.01     # under the cap: as asked
    assert 0 < len(_sources(data_dir, "val", _cfg(0.5))) <= 15


# ---- choosing the best student ------------------------------------------------------------------------
def _model(name, d, test, val=None, role="student"):
    m = {"name": name, "role": role, "width_divisor": d, "init": "pretrain", "targets": [], "alpha": 0.0,
         "beta": 0.0, "params": 1, "flops": 1, "metrics": {"nrmse": test}}
    if val is not None:
        m["val_metrics"] = {"nrmse": val}
    return m


def test_the_best_student_is_chosen_on_val_not_on_test():
    models = [_model("teacher", 1, 1.0, 1.0, role="teacher"), _model("a", 8, 10.0, 14.0), _model("b", 8, 12.0, 11.0),
              _model("c", 4, 9.0, 9.5)]
    assert TASKS["align"].best_students(models) == ["b", "c"]   # a is better on test, b on val
    assert TASKS["align"].chosen_by(models) == "val"
    # A record without val metrics (--val_fraction=0, an older run): chosen on test, and said so.
    models[1].pop("val_metrics")
    assert TASKS["align"].best_students(models) == ["a", "c"]
    assert TASKS["align"].chosen_by(models) == "test"


def test_results_md_says_which_split_chose_the_best_student(tmp_path):
    models = [_model("teacher", 1, 1.0, 1.0, role="teacher"), _model("a", 8, 10.0, 14.0), _model("b", 8, 12.0, 11.0)]
    res = {"task": "align", "data": "d", "preset": "quick", "seed": 0, "models": models}
    text = results.write_markdown(res, str(tmp_path / "results.md"))
    line = next(ln for ln in text.splitlines() if ln.startswith("- best student"))
    assert "by validation nrmse" in line and "/8 b (val 11.00, test 12.00)" in line
    assert "| a | 10.00 |" in text and "val nrmse (%)" in text   # test figures reported, val beside them
    # --mode=evaluate on other data: the val figures are still the training data's, and the file says so.
    text = results.write_markdown({**res, "eval_data": "/x/other", "trained_on": "d"}, str(tmp_path / "eval.md"))
    assert "- val: the validation split of the training data (d)" in text
    models[2].pop("val_metrics")
    text = results.write_markdown(res, str(tmp_path / "results.md"))
    assert "by TEST nrmse" in next(ln for ln in text.splitlines() if ln.startswith("- best student"))
    assert "- val:" not in text


def test_training_curves_draw_val_beside_train(tmp_path):
    path = tmp_path / "curves.png"
    panels = plots.plot_history({"s": {"loss": [2.0, 1.0], "val_loss": [2.5, 1.5], "val_nrmse": [30.0, 20.0]},
                                 "t": {"loss": [3.0, 2.0]}}, str(path))
    assert panels == ["loss (dashed: val)", "val_nrmse"]
    assert path.stat().st_size > 1000


def test_seeds_average_the_val_metrics_too():
    from keras_kd import seeds
    per_seed = {s: {"task": "align", "data": "d", "models": [_model("a", 8, 10.0 + s, 12.0 + 2 * s)]} for s in (0, 1)}
    agg = seeds.aggregate(per_seed)["models"][0]
    assert agg["val_metrics"] == {"nrmse": 13.0} and agg["val_metrics_std"]["nrmse"] == pytest.approx(2 ** 0.5)


# ---- a trained stage ------------------------------------------------------------------------------------
def test_a_trained_stage_validates_every_epoch_and_records_val_metrics(data_dir, tmp_path):
    """One /8 student, 2 epochs: fit's val curves (loss and the headline), TensorBoard's validation logs,
    val metrics in the record and results.json beside the test ones, the val images out of training."""
    cfg = Config(data=data_dir, model_dir=str(tmp_path), image_size=32, students=(8,),
                 resnet_blocks=(1, 1, 1, 1), cls_inits=("label",),
                 batch_size=8, student_epochs=2, verbose=0, val_fraction=0.25, optimizer="adamw",
                 lr_schedule="cosine", lr_scratch=3e-3)
    logs = []
    runner = Runner(cfg, tf.distribute.get_strategy(), log=logs.append)
    rec = runner.ensure("classify", "student_d8_label")
    counts = pipeline.split_counts(data_dir, TASKS["classify"].batch_config(cfg, True))
    assert rec["val_images"] == counts["val"] > 0
    assert any(f"training 2 epochs × {counts['train'] // 8} steps" in ln and f"validating on {counts['val']}" in ln
               for ln in logs)
    hist = rec["history"]
    assert len(hist["val_loss"]) == len(hist["val_top1"]) == len(hist["loss"]) == 2
    assert "top1" not in hist                                   # tracked on val only
    assert set(rec["val_metrics"]) >= {"top1", "pair_acc"} and set(rec["metrics"]) >= {"top1", "pair_acc"}
    # fit's last val_top1 is the evaluation of the trained model on the same val images.
    assert rec["val_metrics"]["top1"] == pytest.approx(hist["val_top1"][-1], abs=1e-6)
    assert rec["signature"]["val_fraction"] == 0.25
    assert os.listdir(tmp_path / "classify" / "logs" / "student_d8_label" / "validation")
    runner._plans["classify"] = {"student_d8_label": runner.stage("classify", "student_d8_label")}
    data = runner.run("classify")
    saved = json.loads((tmp_path / "classify" / "results.json").read_text())
    results.validate(saved)
    assert saved["models"][0]["val_metrics"] == rec["val_metrics"] and data["models"][0]["metrics"] == rec["metrics"]


def test_pk_batches_need_p_identities_left_for_training(identity_dir, tmp_path):
    """On data split by identity the val split holds out whole people: P×K batches need P of those left."""
    cfg = Config(data=identity_dir, model_dir=str(tmp_path), image_size=32, students=(8,),
                 resnet_blocks=(1, 1, 1, 1), verbose=0,
                 val_fraction=0.25, verify_softmax=(False,), images_per_id=2, ids_per_batch=2)
    counts = pipeline.split_counts(identity_dir, TASKS["verify"].batch_config(cfg, True))
    p = counts["train_ids"] + 1
    assert p <= counts["train_ids"] + counts["val_ids"]           # enough people before the carve
    runner = Runner(cfg.replace(ids_per_batch=p), tf.distribute.get_strategy(), log=lambda _: None)
    with pytest.raises(StageError, match=rf"^--ids_per_batch={p} but {identity_dir} has only {p - 1} identities left "
                                         rf"for training \(--val_fraction=0.25 holds out {counts['val_ids']} more\)$"):
        runner.ensure("verify", "student_d8_pretrain")


def test_a_val_fraction_that_leaves_no_train_record_stops_naming_the_data(tmp_path, monkeypatch):
    d = tmp_path / "tiny"
    synthetic.write_synthetic(str(d), 2, 3, 40, seed=0, log=lambda *_: None)
    monkeypatch.setattr(pipeline, "is_val", lambda rec, rule: tf.constant(True))
    cfg = Config(data=str(d), model_dir=str(tmp_path / "runs"), image_size=32, students=(8,),
                 resnet_blocks=(1, 1, 1, 1), cls_inits=("label",),
                 batch_size=2, verbose=0, val_fraction=0.5)
    runner = Runner(cfg, tf.distribute.get_strategy(), log=lambda _: None)
    with pytest.raises(DataError, match=rf"^{d}: --val_fraction=0.5 leaves no train record \(all \d+ are held out"):
        runner.ensure("classify", "student_d8_label")
    assert not (tmp_path / "runs" / "classify" / "stages").exists()


@pytest.mark.slow  # a TensorFlow subprocess with 2 logical CPUs: ~30 s on 2 shared cores
def test_two_replicas_validate_on_exactly_the_val_split_every_epoch(tmp_path):
    """Mirrored over 2 replicas, a val split of an odd number of batches: every epoch's pass (one iterator,
    as `fit` keeps it) delivers each val image once, padded with a batch of weight 0, and the evaluation's
    loss and metric average over exactly the val images."""
    from conftest import run_two_cpu_script
    out = run_two_cpu_script(f"""
import dataclasses
from keras_kd.config import Config
from keras_kd.data import pipeline, synthetic
from keras_kd.stages import Runner
from keras_kd.tasks import TASKS
synthetic.write_synthetic({str(tmp_path / 'd')!r}, 6, 20, 40, seed=0, log=lambda *_: None)
cfg = Config(data={str(tmp_path / 'd')!r}, model_dir={str(tmp_path / 'runs')!r}, image_size=32, students=(8,),
             resnet_blocks=(1, 1, 1, 1),
             cls_inits=("label",), batch_size=8, verbose=0, val_fraction=0.25)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
runner = Runner(cfg, strategy, log=lambda _: None)
task = TASKS["classify"]
n_val = pipeline.split_counts(cfg.data, task.batch_config(cfg, True))["val"]
val_cfg = dataclasses.replace(task.batch_config(cfg, False), batch_size=10)  # 5 a replica
want = sorted(int(l) for _, y in pipeline.make_dataset(cfg.data, "val", val_cfg, training=False) for l in y["label"])
vds, steps = runner.inputs.val_dataset(cfg.data, val_cfg, None, n_val)
it, epochs = iter(vds), []
for _ in range(3):
    labels, weights = [], []
    for _ in range(steps):
        y = next(it)[1]
        for l, w in zip(strategy.experimental_local_results(y["label"]), strategy.experimental_local_results(y["weight"])):
            labels += l.numpy()[w.numpy() > 0].tolist()
            weights.append(float(w.numpy().sum()))
    epochs.append({{"labels": sorted(labels), "weights": weights}})
with strategy.scope():
    d = Distiller(resnet.build_model(8, 32, 6, name="s"), None, task.task_loss(None, cfg),
                  eval_metrics=task.eval_metrics(None))
    d.compile(keras.optimizers.Adam(1e-3))
counts = []
for _ in range(2):
    logs = d.evaluate(vds, steps=steps, verbose=0, return_dict=True)
    counts.append([float(d.trackers["loss"].count.numpy()), float(d.eval_trackers["top1"].count.numpy())])
print("RESULT " + json.dumps({{"n_val": n_val, "want": want, "epochs": epochs, "counts": counts,
                              "keys": sorted(logs)}}))
""")
    n = out["n_val"]
    assert -(-n // 5) % 2 == 1                                      # an odd number of batches: one padded
    for epoch in out["epochs"]:
        assert epoch["labels"] == out["want"] and len(epoch["labels"]) == n
        assert epoch["weights"][-1] == 0 and sum(epoch["weights"]) == n
    assert out["counts"] == [[n, n], [n, n]]
    assert out["keys"] == ["loss", "task", "top1"]
