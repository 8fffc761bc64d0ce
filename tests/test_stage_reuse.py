"""A saved stage is reused only when it was trained with the settings the current flags give (its signature).

Saved stages are faked here (a record and an empty weights file: reuse reads the record, never the weights),
so no network is trained but in the last test (how later stages read saved networks); the end-to-end rerun of a
trained model_dir is in test_main.py.
"""
import json
import os
import random
import shutil

import numpy as np
import pytest

from conftest import PAPER_RECIPE
from keras_kd import stages
from keras_kd.config import Config
from keras_kd.data import synthetic
from keras_kd.keras import keras, tf
from keras_kd.signatures import signature_changes
from keras_kd.stages import Runner, StageError

BASE = dict(image_size=32, students=(8,), cls_inits=("label",), batch_size=8, verbose=0, teacher_epochs=1,
            student_epochs=1, transfer_epochs=1, pretrain_epochs=1, ab_grid=((1.0, 0.0),),
            transfer_inits=("distill",), verify_softmax=(False,), ids_per_batch=2, images_per_id=2,
            teacher_transfer_epochs=0, pretrain_transfer_epochs=0, resnet_blocks=(1, 1, 1, 1), **PAPER_RECIPE)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    synthetic.write_synthetic(str(d), 4, 6, 40, seed=0, log=lambda *_: None)
    return str(d)


def _runner(data_dir, model_dir, **kw):
    logs = []
    cfg = Config(data=data_dir, model_dir=str(model_dir), **{**BASE, **kw})
    return Runner(cfg, tf.distribute.get_strategy(), log=logs.append), logs


def _fake_saved(runner, task, name, **record):
    """Writes what a trained stage leaves (its record last), with the signature the runner's flags give."""
    stage = runner.stage(task, name)
    rec = {"name": name, "role": stage.role, "width_divisor": stage.width_divisor, "init": stage.init,
           "targets": [n for n, _ in stage.targets], "method": stage.method, "alpha": stage.weight_of("soft"),
           "beta": stage.weight_of("hidden"), "params": 1, "flops": 1, "metrics": {"top1": 0.5},
           "epochs": stage.epochs, "train_seconds": 1.0, "seed": runner.cfg.seed,
           "image_size": runner.cfg.image_size, "num_classes": runner.num_classes,
           "data": runner.meta(task)["name"], "evaluate": stage.evaluate, "history": {},
           "signature": runner.signature(stage), **record}
    if rec["signature"] is None:
        del rec["signature"]
    os.makedirs(os.path.dirname(runner.path(stage, "")), exist_ok=True)
    open(runner.path(stage, ".weights.h5"), "wb").close()
    with open(runner.path(stage, ".json"), "w") as f:
        json.dump(rec, f)
    return rec


def _save_classify(runner):
    for name in ("teacher", "student_d8_label", "student_d8_label_soft"):
        _fake_saved(runner, "classify", name)


@pytest.mark.parametrize("change, message", [
    ({"alpha": 2.0}, "alpha=1.0 (now 2.0)"),
    ({"temperature": 4.0}, "temperature=3.0 (now 4.0)"),
    ({"student_epochs": 20}, "epochs=1 (now 20)"),
    ({"lr_init": 0.05}, "lr=0.01 (now 0.05)"),
    ({"weight_decay": 0.5}, "weight_decay=0.0001 (now 0.5)"),
    ({"seed": 3}, "seed=0 (now 3)"),
    ({"val_fraction": 0.2}, "val_fraction=0.1 (now 0.2)"),
    ({"val_fraction": 0.0}, "val_fraction=0.1 (now unset), val_max_images=500 (now unset)"),
])
def test_a_stage_saved_with_other_settings_is_refused_naming_them(data_dir, tmp_path, change, message):
    runner, _ = _runner(data_dir, tmp_path)
    _save_classify(runner)
    changed, _ = _runner(data_dir, tmp_path, **change)
    with pytest.raises(StageError) as e:
        changed.ensure("classify", "student_d8_label_soft")
    assert str(e.value).startswith(f"stage classify/student_d8_label_soft: saved with {message}"), str(e.value)
    assert str(e.value).endswith("; use --overwrite to retrain or another --model_dir")


def test_a_stage_trained_before_the_val_split_is_refused_and_reused_with_it_off(data_dir, tmp_path):
    """A model_dir of a keras-kd before the val split: its stages trained on what is now held out."""
    old, _ = _runner(data_dir, tmp_path, val_fraction=0.0)
    _save_classify(old)
    now, _ = _runner(data_dir, tmp_path)
    with pytest.raises(StageError, match=r"^stage classify/teacher: saved with val_fraction=unset \(now 0\.1\), "
                                         r"val_max_images=unset \(now 500\); use --overwrite"):
        now.ensure("classify", "teacher")
    off, _ = _runner(data_dir, tmp_path, val_fraction=0.0)
    assert off.ensure("classify", "student_d8_label_soft")["metrics"] == {"top1": 0.5}


def test_the_same_settings_reuse_the_stage(data_dir, tmp_path):
    runner, _ = _runner(data_dir, tmp_path)
    _save_classify(runner)
    again, logs = _runner(data_dir, tmp_path)
    assert again.ensure("classify", "student_d8_label_soft")["metrics"] == {"top1": 0.5}
    assert logs and "classify/student_d8_label_soft: reusing" in logs[-1]


def test_a_setting_that_does_not_shape_the_stage_does_not_refuse_it(data_dir, tmp_path):
    """Momentum is SGD's; --dkd_beta is DKD's: neither changes an AdamW-trained soft-target student."""
    runner, _ = _runner(data_dir, tmp_path, optimizer="adamw", lr_schedule="cosine")
    _save_classify(runner)
    other, _ = _runner(data_dir, tmp_path, optimizer="adamw", lr_schedule="cosine", momentum=0.5, dkd_beta=2.0,
                       backup_steps=5, verify_softmax=(True,))
    assert other.ensure("classify", "student_d8_label_soft")["metrics"] == {"top1": 0.5}


def test_a_change_upstream_names_the_stage_it_shaped(data_dir, tmp_path):
    runner, _ = _runner(data_dir, tmp_path)
    _save_classify(runner)
    changed, _ = _runner(data_dir, tmp_path, lr_scratch=0.3)
    with pytest.raises(StageError, match=r"^stage classify/student_d8_label_soft: saved with lr=0\.1 \(now 0\.3\) "
                                         r"in classify/student_d8_label, classify/teacher; use --overwrite"):
        changed.ensure("classify", "student_d8_label_soft")


def test_verification_settings_reach_its_stages_and_classification_is_unaffected(data_dir, tmp_path):
    runner, _ = _runner(data_dir, tmp_path)
    _save_classify(runner)
    for name in ("teacher", "student_d8_distill_a1b0"):
        _fake_saved(runner, "verify", name, metrics={"rank1": 0.5})
    changed, _ = _runner(data_dir, tmp_path, margin=0.2)
    with pytest.raises(StageError, match=r"^stage verify/student_d8_distill_a1b0: saved with margin=0\.4 "
                                         r"\(now 0\.2\); "):
        changed.ensure("verify", "student_d8_distill_a1b0")
    changed.ensure("classify", "student_d8_label_soft")  # no margin in classification


def test_a_record_without_a_signature_is_refused(data_dir, tmp_path):
    runner, _ = _runner(data_dir, tmp_path)
    _fake_saved(runner, "classify", "teacher", signature=None)
    with pytest.raises(StageError, match=r"^stage classify/teacher: saved without a signature .*; use --overwrite"):
        runner.ensure("classify", "teacher")


def test_a_shared_teacher_of_the_first_seed_is_reused_by_the_others(data_dir, tmp_path):
    first, _ = _runner(data_dir, tmp_path / "seed0", seed=0, seeds=(0, 1))
    _fake_saved(first, "classify", "teacher")
    (tmp_path / "seed1" / "classify").mkdir(parents=True)
    (tmp_path / "seed0" / "classify" / "stages").rename(tmp_path / "seed1" / "classify" / "stages")  # as shared
    second, _ = _runner(data_dir, tmp_path / "seed1", seed=1, seeds=(0, 1))
    second._records[("classify", "teacher")] = second.ensure("classify", "teacher")
    # A student trained in seed 1 records its teacher as it is: trained with seed 0.
    sig = second._trained_signature(second.stage("classify", "student_d8_label_soft"))
    assert sig["seed"] == 1 and sig["teacher"]["seed"] == 0
    assert signature_changes(sig, second.signature(second.stage("classify", "student_d8_label_soft")), True) == []
    # Without sharing, the seed is the seed's own, and the teacher of seed 0 is not this seed's.
    own, _ = _runner(data_dir, tmp_path / "seed1", seed=1, seeds=(0, 1), share_teacher=False)
    with pytest.raises(StageError, match=r"^stage classify/teacher: saved with seed=0 \(now 1\); "):
        own.ensure("classify", "teacher")


def test_the_run_writes_its_config_and_results_keep_their_schema(data_dir, tmp_path):
    from keras_kd import results

    runner, _ = _runner(data_dir, tmp_path)
    _save_classify(runner)
    runner.run("classify")
    assert json.loads((tmp_path / "classify" / "config.json").read_text()) == json.loads(json.dumps(
        runner.cfg.__dict__))
    data = json.loads((tmp_path / "classify" / "results.json").read_text())
    results.validate(data)
    assert not any("signature" in m for m in data["models"])


def test_main_stops_with_one_line_naming_the_changed_flag(data_dir, tmp_path, parse, capsys):
    import main

    argv = ["--task=classify", "--preset=smoke", f"--data={data_dir}", f"--model_dir={tmp_path}",
            "--cls_inits=label", "--noexport", "--verbose=0"]
    runner = Runner(parse(*argv), tf.distribute.get_strategy(), log=lambda _: None)
    _save_classify(runner)
    parse(*argv, "--alpha=2")
    assert main.main(["main.py"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: stage classify/student_d8_label_soft: saved with alpha=1.0 (now 2.0); use "
                       "--overwrite to retrain or another --model_dir")


def test_the_teachers_precision_shapes_it_and_what_it_taught_only(data_dir, tmp_path):
    """A teacher trained in float32 is not reused as a bfloat16 one (nor its distilled students); the
    label-only student, which never saw it, is."""
    runner, _ = _runner(data_dir, tmp_path, teacher_precision="float32")
    _save_classify(runner)
    bf16, _ = _runner(data_dir, tmp_path, teacher_precision="bfloat16")
    assert bf16.compute(bf16.stage("classify", "teacher")) == "bfloat16"
    assert bf16.compute(bf16.stage("classify", "student_d8_label_soft")) == "float32"
    assert bf16.ensure("classify", "student_d8_label")["metrics"] == {"top1": 0.5}
    with pytest.raises(StageError, match=r"^stage classify/student_d8_label_soft: saved with precision=unset "
                                         r"\(now 'bfloat16'\) in classify/teacher; use --overwrite to retrain, "
                                         r"--teacher_precision=float32 to reuse it, or another --model_dir$"):
        bf16.ensure("classify", "student_d8_label_soft")
    back, _ = _runner(data_dir, tmp_path, teacher_precision="float32")  # as the hint says
    assert back.ensure("classify", "student_d8_label_soft")["metrics"] == {"top1": 0.5}
    other, _ = _runner(data_dir, tmp_path, teacher_precision="bfloat16", student_epochs=3)
    with pytest.raises(StageError, match=r"^stage classify/student_d8_label_soft: saved with epochs=1 \(now 3\), "
                                         r"precision=unset \(now 'bfloat16'\) in classify/teacher; use --overwrite "
                                         r"to retrain or another --model_dir$"):  # precision alone would not do
        other.ensure("classify", "student_d8_label_soft")


def test_a_saved_network_is_loaded_once_per_run_and_what_a_stage_draws_does_not_depend_on_it(data_dir, tmp_path,
                                                                                             monkeypatch):
    """The teacher feeds three stages (two as their teacher, one as its selected start) and is loaded once. The
    last of them, trained alone by a fresh run that loads its teacher for the first time, draws the same random
    numbers once its networks are built (probed where its Distiller is made): the seed is set after the loads.
    (Its weights cannot be compared: multi-threaded training on a CPU is not bitwise reproducible.)"""
    loads, probes = [], {}
    load = Runner.load
    monkeypatch.setattr(Runner, "load", lambda self, task, name: loads.append((task, name)) or load(self, task, name))
    real = stages.Distiller

    def distiller(student, *args, **kwargs):
        probe = keras.layers.Dense(4)  # draws its kernel as the Keras initializers do
        probe.build((None, 3))
        probes.setdefault(student.name, []).append(
            [*probe.kernel.numpy().ravel(), random.random(), *tf.random.uniform([2]).numpy(), *np.random.rand(2)])
        return real(student, *args, **kwargs)
    monkeypatch.setattr(stages, "Distiller", distiller)
    kw = dict(cls_inits=("label", "select"), verbose=0, parallel_stages="off")  # every stage in this process
    runner, _ = _runner(data_dir, tmp_path / "all", **kw)
    runner.run("classify")
    assert list(runner.plan("classify")) == ["teacher", "student_d8_label", "student_d8_label_soft",
                                             "student_d8_select", "student_d8_select_soft"]
    assert sorted(loads) == [("classify", "student_d8_label"), ("classify", "student_d8_select"),
                             ("classify", "teacher")]
    saved = tmp_path / "all" / "classify" / "stages"
    alone = tmp_path / "alone" / "classify" / "stages"
    alone.mkdir(parents=True)
    for name in ("teacher", "student_d8_select"):
        for suffix in (".json", ".weights.h5"):
            shutil.copy(saved / (name + suffix), alone / (name + suffix))
    fresh, logs = _runner(data_dir, tmp_path / "alone", **kw)
    fresh.ensure("classify", "student_d8_select_soft")
    assert any("student_d8_select_soft: training" in line for line in logs)
    first, alone_run = probes["student_d8_select_soft"]
    np.testing.assert_array_equal(first, alone_run)
