"""Student architectures (models/archs.py): every one builds with every head, exposes the named features
the distillation losses tap, moves between tasks by layer name, distils from a ResNet teacher with every
loss, and runs end to end through main.py (every task, resume, teacher cache)."""
import json

import numpy as np
import pytest

from conftest import kill_after_first_backup, ok, run_main, run_two_cpu_script
from keras_kd import results
from keras_kd.config import Config
from keras_kd.distill import losses
from keras_kd.distill.distiller import Distiller
from keras_kd.keras import keras, tf
from keras_kd.models import archs, network
from keras_kd.tasks import TASKS

MOBILE = ["mobilefacenet", "mobilenet_v3_small", "mobilenet_v3_large"]
STRIDES = {"stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}


@pytest.mark.parametrize("arch", MOBILE)
def test_every_head_and_the_named_features(arch):
    m = archs.build_model(arch, 1, 48, 7, ("landmarks", "embedding"), embedding_dim=16, landmark_head="spatial")
    out = archs.feature_model(m, list(STRIDES) + ["hint"])(np.zeros((2, 48, 48, 3), np.float32))
    assert out["logits"].shape == (2, 7) and out["landmarks"].shape == (2, 5, 2) and out["embedding"].shape == (2, 16)
    for name, stride in STRIDES.items():
        side = out[name].shape[1]
        # MobileFaceNet ends at stride 16 (its GDConv reads that map); the others match ResNet's strides.
        assert side == -(-48 // (16 if arch == "mobilefacenet" and name == "stage4" else stride)), (name, side)
    assert out["hint"].shape == out["stage2"].shape
    assert archs.feature_layers(m) is archs.ARCHS[arch].feature_layers


def test_each_architecture_is_told_apart_by_its_layers():
    for name, arch in archs.ARCHS.items():
        m = archs.build_model(name, 8, 32, 3)
        assert archs.feature_layers(m) is arch.feature_layers, name


@pytest.mark.parametrize("arch", MOBILE)
def test_weights_move_between_tasks_by_layer_name(arch):
    """classify → align: the trunk and the class head carry over, the landmark head starts fresh."""
    keras.utils.set_random_seed(0)
    src = archs.build_model(arch, 1, 32, 5, name="a")
    keras.utils.set_random_seed(1)
    dst = archs.build_model(arch, 1, 32, 5, ("landmarks",), landmark_head="spatial", name="b")
    copied = network.transfer_weights(src, dst)
    trunk = [layer.name for layer in src.layers if layer.weights]
    assert sorted(copied) == sorted(trunk)
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(src(x)["logits"], dst(x)["logits"], rtol=1e-5, atol=1e-5)


def test_resnet_blocks_make_a_shallow_trunk_with_the_same_named_features():
    """--resnet_blocks=1,1,1,1 (the smoke preset): the same stem, stages, strides and heads as ResNet-50 with
    one block per stage; the features are found by name; other architectures ignore it."""
    from keras_kd.models import resnet
    full = archs.build_model("resnet50", 8, 32, 5, ("landmarks",), landmark_head="spatial")
    tiny = archs.build_model("resnet50", 8, 32, 5, ("landmarks",), landmark_head="spatial", blocks=(1, 1, 1, 1))
    assert len(tiny.layers) < len(full.layers) / 2
    assert resnet.blocks_of(layer.name for layer in full.layers) == resnet.BLOCKS
    assert resnet.blocks_of(layer.name for layer in tiny.layers) == (1, 1, 1, 1)
    assert archs.feature_layers(tiny) == {**{f"stage{s}": f"s{s}b1_out" for s in range(1, 5)},
                                          "hint": "s2b1_out", "hidden": "hidden"}
    x = np.zeros((2, 32, 32, 3), np.float32)
    a, b = (archs.feature_model(m, list(STRIDES))(x) for m in (full, tiny))
    assert all(a[k].shape == b[k].shape for k in [*STRIDES, "landmarks", "logits"])
    mbf = archs.build_model("mobilefacenet", 1, 32, 5, blocks=(1, 1, 1, 1))
    assert archs.feature_layers(mbf) is archs.ARCHS["mobilefacenet"].feature_layers
    with pytest.raises(ValueError, match="4 positive block counts"):
        archs.build_model("resnet50", 8, 32, 5, blocks=(1, 1, 1))


def test_resnet_blocks_enter_signatures_and_records_only_when_not_resnet50(tmp_path):
    from keras_kd.stages import Runner
    cfg = Config(students=(8,), cls_inits=("label",), model_dir=str(tmp_path), data=str(tmp_path))
    sig = lambda c: Runner(c, tf.distribute.get_strategy(), log=lambda _: None).signature(  # noqa: E731
        TASKS["classify"].plan(c)[0])
    with pytest.MonkeyPatch.context() as mp:  # no data is read: the data's name and classes are given
        mp.setattr(Runner, "meta", lambda self, task: {"name": "faces"})
        mp.setattr(Runner, "num_classes", 5)
        assert "resnet_blocks" not in sig(cfg)
        assert sig(cfg.replace(resnet_blocks=(1, 1, 1, 1)))["resnet_blocks"] == [1, 1, 1, 1]


def test_width_multiplier_and_tags():
    full = network.count_params(archs.build_model("mobilefacenet", 1, 48, 10))
    half = network.count_params(archs.build_model("mobilefacenet", 1, 48, 10, width=0.5))
    assert half < 0.5 * full
    assert archs.student_tag("resnet50", 8) == "d8" and archs.student_tag("mobilefacenet") == "mbf"
    assert archs.student_tag("mobilenet_v3_small", width=0.5) == "mv3s_x0p5"
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        archs.get("vgg")


@pytest.mark.parametrize("arch", MOBILE)
def test_a_mobile_student_distils_from_a_resnet_teacher_with_every_loss(arch):
    """One fit step per architecture with the terms that tap every kind of feature (logits, K, the hint
    map through its 1×1 adapter, the four stage maps, relations, embeddings): finite, and the student moves."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 32, 32, 3)).astype(np.float32)
    y = {"label": rng.integers(0, 4, 8).astype(np.int32)}
    teacher = archs.build_model("resnet50", 8, 32, 4, name="teacher")
    student = archs.build_model(arch, 1, 32, 4, name="student")
    targets = [("soft", 1.0), ("hidden", 1.0), ("hint", 1.0), ("at", 1.0), ("rkd", 1.0), ("emb_cos", 1.0)]
    d = Distiller(student, teacher, task_loss=lambda yy, s: losses.label_ce(yy["label"], s["logits"]),
                  targets=targets)
    d.compile(keras.optimizers.SGD(0.01))
    before = [w.copy() for w in student.get_weights()]
    hist = d.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0).history
    assert all(np.isfinite(hist[name][0]) for name, _ in targets) and np.isfinite(hist["loss"][0])
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, student.get_weights()))


def test_plans_name_each_student_after_its_network_and_sign_its_architecture():
    cfg = Config(students=(8,), student_arch=("resnet50", "mobilefacenet"), cls_inits=("label",))
    names = [s.name for s in TASKS["classify"].plan(cfg)]
    assert names == ["teacher", "student_d8_label", "student_d8_label_soft", "student_mbf_label",
                     "student_mbf_label_soft"]
    align = {s.name: s for s in TASKS["align"].plan(cfg.replace(ab_grid=((0, 0),)))}
    assert align["student_mbf_distill_a0b0"].init_from == ("classify", "student_mbf_label_soft")
    assert align["student_mbf_distill_a0b0"].arch == "mobilefacenet"
    only = [s.name for s in TASKS["classify"].plan(cfg.replace(student_arch=("mobilenet_v3_small",),
                                                               student_width=0.75))]
    assert only == ["teacher", "student_mv3s_x0p75_label", "student_mv3s_x0p75_label_soft"]


def test_results_put_the_best_student_of_each_network_side_by_side(tmp_path):
    def rec(name, net, arch, top1, val, **kw):
        return dict(name=name, role="student", width_divisor=int(net[1:]) if net.startswith("d") else 1,
                    init="label", targets=[], alpha=0, beta=0, params=1_000_000, flops=50_000_000,
                    metrics={"top1": top1}, val_metrics={"top1": val}, arch=arch, network=net, **kw)
    models = [dict(name="teacher", role="teacher", width_divisor=1, init="scratch", targets=[], alpha=0, beta=0,
                   params=23_000_000, flops=900_000_000, metrics={"top1": 0.7}),
              rec("student_d8_label", "d8", "resnet50", 0.30, 0.31),
              rec("student_d8_label_soft", "d8", "resnet50", 0.40, 0.42),
              rec("student_mbf_label", "mbf", "mobilefacenet", 0.45, 0.40),
              rec("student_mbf_label_soft", "mbf", "mobilefacenet", 0.44, 0.47,
                  export={"tflite_int8": {"size_bytes": 2048, "latency_ms": 1.25, "top1": 0.43}})]
    names, by = results.best_students(models, "top1")
    assert sorted(names) == ["student_d8_label_soft", "student_mbf_label_soft"] and by == "val"
    md = results.write_markdown(dict(task="classify", data="s", preset="quick", seed=0, models=models),
                                str(tmp_path / "r.md"))
    side = md.split("## Students side by side")[1].split("\n## ")[0]
    assert "| mbf | student_mbf_label_soft | 44.00 |" in side and "| 2 | 1.25 |" in side
    assert "| /8 | student_d8_label_soft | 40.00 |" in side
    # The paper's Table 2 shape stays ResNet's: no /1 column for the MobileFaceNet (width_divisor 1) rows.
    assert "| /1 |" not in md.split("## Table 2 shape")[1].split("\n## ")[0].splitlines()[2]


MIRRORED_MBF = """
from keras_kd.models import archs

def build():
    keras.utils.set_random_seed(0)
    s = freeze_bn(archs.build_model("mobilefacenet", 1, 32, 4, name="student"))
    t = resnet.build_model(4, 32, 4, name="teacher")
    t.set_weights(t0)
    return Distiller(s, t, task_loss=lambda yy, o: losses.label_ce(yy["label"], o["logits"]),
                     targets=[("soft", 1.0), ("at", 1.0)])

compare_mirrored(build)
"""


@pytest.mark.slow  # a TensorFlow subprocess
def test_mirrored_two_replicas_match_one_device_for_mobilefacenet():
    r = run_two_cpu_script(MIRRORED_MBF)
    assert r["replicas"] == [1, 2] and r["same_start"] and r["change"] > 1e-3
    np.testing.assert_allclose(r["loss"][1], r["loss"][0], rtol=1e-5)
    assert r["diff"] < 1e-5 * r["change"], r  # float32 summation order: relative to how far the step moved


# ---- end to end ------------------------------------------------------------------------------------------
SMOKE = ["--preset=smoke", "--verbose=0", "--noexport"]


def _models(model_dir, task):
    data = json.loads((model_dir / task / "results.json").read_text())
    results.validate(data)
    return {m["name"]: m for m in data["models"]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.mark.slow
def test_every_task_trains_and_reports_mobile_students(model_dir):
    ok(run_main("--task=classify", *SMOKE, f"--model_dir={model_dir}", "--cls_inits=label",
                "--student_arch=mobilefacenet,mobilenet_v3_small", "--teacher_cache=memory"))
    # MobileNetV3-Large is Small's builder (keras.applications) with the same layer types: it trains with every
    # loss in test_a_mobile_student_distils_from_a_resnet_teacher_with_every_loss.
    models = _models(model_dir, "classify")
    for tag, arch in (("mbf", "mobilefacenet"), ("mv3s", "mobilenet_v3_small")):
        for name in (f"student_{tag}_label", f"student_{tag}_label_soft_tc"):  # the cached-teacher twin of Ours
            assert models[name]["arch"] == arch and models[name]["network"] == tag, name
            assert 0 <= models[name]["metrics"]["top1"] <= 1
    assert "## Students side by side" in (model_dir / "classify" / "results.md").read_text()
    ok(run_main("--task=align", *SMOKE, f"--model_dir={model_dir}", "--cls_inits=label",
                "--student_arch=mobilefacenet", "--ab_grid=1:1", "--transfer_inits=distill"))
    align = _models(model_dir, "align")  # from scratch (pretrain): tests/test_arch_export.py's verification
    assert {"teacher", "student_mbf_distill_a1b1"} <= set(align)
    assert np.isfinite(align["student_mbf_distill_a1b1"]["metrics"]["nrmse"])
    # Verification with every mobile architecture, and its export: tests/test_arch_export.py.


@pytest.mark.slow
def test_a_killed_mobile_student_resumes_where_it_was(tmp_path):
    args = ["--task=classify", "--preset=smoke", "--cls_inits=label", "--verbose=2", "--noexport",
            "--student_arch=mobilefacenet", "--student_epochs=3", f"--model_dir={tmp_path}"]
    kill_after_first_backup(args, tmp_path / "classify" / "backup" / "student_mbf_label")
    out = ok(run_main(*args))
    assert "[stage] classify/student_mbf_label: resuming at epoch" in out
    rec = json.loads((tmp_path / "classify" / "stages" / "student_mbf_label.json").read_text())
    assert rec["resumed_at_epoch"] >= 2 and len(rec["history"]["loss"]) == 3


def test_every_architecture_averages_batch_norm_statistics_as_resnet_does():
    """keras.applications' MobileNetV3 uses momentum 0.999: after a quick run's few hundred steps its moving
    statistics were still near their initial values and the trained student scored at chance."""
    for name in archs.ARCHS:
        m = archs.build_model(name, 8, 32, 3)
        assert {layer.momentum for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}
