"""A teacher keras-kd did not train: a Keras model file (--teacher) or a file of its outputs (--teacher_outputs)."""
import json

import numpy as np
import pytest

from conftest import ok, run_main
from keras_kd.config import Config
from keras_kd.data import synthetic
from keras_kd.data.example import DataError
from keras_kd.keras import keras
from keras_kd.teachers import external, outputs
from keras_kd.teachers.external import TeacherError

CLASSES = 8  # the smoke preset's synthetic identities


def _teacher(size=40, classes=CLASSES, emb=16):
    """A small 'pretrained' model in another project's conventions: its own output names, 40 px input."""
    keras.utils.set_random_seed(0)
    x = keras.Input((size, size, 3), name="face")
    h = keras.layers.Conv2D(8, 3, 2, activation="relu", name="conv")(x)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    e = keras.layers.Dense(emb, name="emb")(h)
    return keras.Model(x, {"emb": e, "cls": keras.layers.Dense(classes, name="cls")(e)}, name="their_model")


SPEC = {"outputs": {"embedding": "emb", "logits": "cls"},
        "input": {"size": 40, "range": [0, 255], "mean": [127.5, 127.5, 127.5], "std": [128, 128, 128],
                  "channels": "bgr"}}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "face.keras"
    _teacher().save(str(path))
    (path.parent / "face.keras.json").write_text(json.dumps(SPEC))
    return path


def test_the_wrapper_applies_the_input_contract_and_names_the_outputs(teacher_file):
    model = external.load_model(str(teacher_file), image_size=32)
    assert set(model.output) == {"embedding", "logits", "hidden"}
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    inner = keras.models.load_model(str(teacher_file), compile=False)
    import tensorflow as tf
    want_in = ((tf.image.resize(x, [40, 40]).numpy() * 255.0 - 127.5) / 128.0)[..., ::-1]
    want = inner(want_in, training=False)
    got = model(x, training=False)
    np.testing.assert_allclose(got["embedding"], want["emb"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["logits"], want["cls"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["hidden"], got["embedding"])
    assert not model.trainable_weights


def test_one_line_errors_name_the_file_and_what_is_wrong(tmp_path, teacher_file):
    with pytest.raises(TeacherError, match=r"nope\.keras: no such teacher model file"):
        external.load_model(str(tmp_path / "nope.keras"), 32)
    (tmp_path / "junk.keras").write_text("not a model")
    with pytest.raises(TeacherError, match=r"junk\.keras: cannot load a Keras model"):
        external.load_model(str(tmp_path / "junk.keras"), 32)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"outputs": {"embedding": "features"}}))
    with pytest.raises(TeacherError, match=r"has no output 'features' \(for embedding\); its outputs: cls, emb"):
        external.load_model(str(teacher_file), 32, spec=str(bad))
    bad.write_text(json.dumps({"outputs": {"feature": "emb"}}))
    with pytest.raises(TeacherError, match=r"bad\.json: unknown field\(s\) outputs\.feature"):
        external.load_model(str(teacher_file), 32, spec=str(bad))
    # A model that takes 40 px only (flattened features), told it gets 24 px.
    x = keras.Input((40, 40, 3))
    fixed = keras.Model(x, keras.layers.Dense(4, name="emb")(keras.layers.Flatten()(x)))
    fixed.save(str(tmp_path / "fixed.keras"))
    bad.write_text(json.dumps({"input": {"size": 24}}))
    with pytest.raises(TeacherError, match=r"fixed\.keras: cannot take 24×24×3 input"):
        external.load_model(str(tmp_path / "fixed.keras"), 32, spec=str(bad))


def test_a_target_the_teacher_cannot_serve_is_refused_at_planning(teacher_file):
    from keras_kd.tasks import TASKS
    cfg = Config(teacher=str(teacher_file), image_size=32, students=(8,), cls_inits=("label",), kd="at")
    t = external.ExternalTeacher(cfg)
    stage = next(s for s in TASKS["classify"].plan(cfg) if s.targets)
    with pytest.raises(TeacherError, match=r"has no 'stage1' output, which classify/student_d8_label_at's 'at'"):
        t.check(stage, CLASSES)
    cfg = cfg.replace(kd="soft")
    stage = next(s for s in TASKS["classify"].plan(cfg) if s.targets)
    with pytest.raises(TeacherError, match=r"its logits have 8 classes, the data 60"):
        external.ExternalTeacher(cfg).check(stage, 60)


def test_main_distils_from_a_model_file_and_trains_no_teacher(tmp_path, teacher_file):
    out = ok(run_main("--task=classify", "--preset=smoke", f"--model_dir={tmp_path}", "--verbose=0",
                      "--noexport", "--cls_inits=label", f"--teacher={teacher_file}"))
    assert "classify/teacher: the teacher is" in out and "classify/teacher: training" not in out
    assert not (tmp_path / "classify" / "stages" / "teacher.weights.h5").exists()
    res = json.loads((tmp_path / "classify" / "results.json").read_text())
    models = {m["name"]: m for m in res["models"]}
    assert models["teacher"]["init"] == "external" and {"top1", "rank1", "pair_acc"} <= set(models["teacher"]["metrics"])
    ours = models["student_d8_label_soft"]
    assert ours["teacher_source"].startswith("model:face.keras:")
    # Another teacher: the distilled student is not reused as if it were its student.
    other = tmp_path / "other.keras"
    m = _teacher()
    m.get_layer("cls").kernel.assign(m.get_layer("cls").kernel * 2.0)
    m.save(str(other))
    (tmp_path / "other.keras.json").write_text(json.dumps(SPEC))
    proc = run_main("--task=classify", "--preset=smoke", f"--model_dir={tmp_path}", "--verbose=0", "--noexport",
                    "--cls_inits=label", f"--teacher={other}")
    assert proc.returncode == 2
    assert "student_d8_label_soft.json: distilled from model:face.keras:" in proc.stderr
    assert "(now model:other.keras:" in proc.stderr


def test_main_says_in_one_line_what_is_wrong_with_the_teacher(tmp_path):
    proc = run_main("--task=classify", "--preset=smoke", f"--model_dir={tmp_path}", "--verbose=0", "--noexport",
                    f"--teacher={tmp_path}/missing.keras")
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {tmp_path}/missing.keras: no such teacher model file or folder"]


def test_main_distils_from_a_file_of_teacher_outputs(tmp_path, teacher_file):
    # The smoke preset's synthetic data, then the teacher's outputs for it, as another framework would write.
    data = tmp_path / "data" / synthetic.folder_name(8, 16, 40)
    synthetic.write_synthetic(str(data), 8, 16, 40, seed=0, log=lambda *_: None)
    model = external.load_model(str(teacher_file), 40)
    from keras_kd.data import pipeline
    srcs, splits, embs = [], [], []
    for split in ("train", "test"):
        ds = pipeline.make_dataset(str(data), split, pipeline.InputConfig(40, 16), training=False)
        for images, tgt in ds:
            embs.append(model(images, training=False)["embedding"].numpy())
            srcs += [s.decode() for s in tgt["source"].numpy()]
            splits += [split] * len(images)
    path = tmp_path / "teacher_outputs.npz"
    outputs.save(str(path), srcs, splits, {"embedding": np.concatenate(embs)}, str(data), teacher="test model")
    out = ok(run_main("--task=verify", "--preset=smoke", f"--model_dir={tmp_path}", "--verbose=0", "--noexport",
                      "--cls_inits=label", "--kd=emb_sim", "--ab_grid=0:1", "--transfer_inits=distill",
                      "--methods=emb_cos", "--verify_softmax=off", f"--teacher_outputs={path}"))
    assert "training" not in [ln for ln in out.splitlines() if "/teacher:" in ln][0]
    res = json.loads((tmp_path / "verify" / "results.json").read_text())
    models = {m["name"]: m for m in res["models"]}
    assert {"rank1", "pair_acc"} <= set(models["teacher"]["metrics"]) and models["teacher"]["init"] == "external"
    for name in ("student_d8_distill_a0b1", "student_d8_distill_emb_cos"):
        assert models[name]["teacher_source"].startswith("outputs:teacher_outputs.npz:")
        assert np.isfinite(models[name]["metrics"]["rank1"])
    # --mode=evaluate: the teacher's row from the same file, as training measured it; left out without it.
    common = ("--task=verify", "--preset=smoke", f"--model_dir={tmp_path}", "--verbose=0", "--mode=evaluate",
              f"--eval_data={data}", "--cls_inits=label", "--kd=emb_sim", "--ab_grid=0:1", "--transfer_inits=distill",
              "--methods=emb_cos", "--verify_softmax=off")
    eval_json = tmp_path / "verify" / f"eval_{data.name}.json"
    ok(run_main(*common, f"--teacher_outputs={path}"))
    evaluated = {m["name"]: m for m in json.loads(eval_json.read_text())["models"]}
    assert evaluated["teacher"]["metrics"] == pytest.approx(models["teacher"]["metrics"])
    assert evaluated["student_d8_distill_emb_cos"]["metrics"]["rank1"] == \
        pytest.approx(models["student_d8_distill_emb_cos"]["metrics"]["rank1"])
    out = ok(run_main(*common))
    assert "[evaluate] teacher: left out: a teacher given at training" in out
    assert "teacher" not in {m["name"] for m in json.loads(eval_json.read_text())["models"]}
    # A target the file cannot serve (soft needs logits): refused before anything trains.
    proc = run_main("--task=verify", "--preset=smoke", f"--model_dir={tmp_path}", "--verbose=0", "--noexport",
                    "--cls_inits=label", "--kd=emb_sim", "--ab_grid=1:0", "--transfer_inits=distill",
                    "--verify_softmax=off", f"--teacher_outputs={path}")
    assert proc.returncode == 2 and ": training" not in proc.stdout
    assert "teacher_outputs.npz: has no 'logits' output, which verify/student_d8_distill_a1b0's 'soft'" in proc.stderr


def test_two_workers_distil_from_the_model_file_into_identical_students(tmp_path, teacher_file):
    import os
    import subprocess
    import sys

    import h5py
    from conftest import REPO

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "keras_kd.launch", "--workers=2", "--", "main.py",
                           "--task=classify", "--preset=smoke", "--cls_inits=label", "--noexport", "--verbose=0",
                           f"--model_dir={tmp_path}", f"--teacher={teacher_file}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "[worker 0] [done] 3 models" in out and "classify/teacher: training" not in out

    def weights(path):
        got = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: got.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        return got

    a = weights(tmp_path / "classify" / "stages" / "student_d8_label_soft.weights.h5")
    b = weights(tmp_path / ".workers" / "worker-1" / "classify" / "stages" / "student_d8_label_soft.weights.h5")
    assert a.keys() == b.keys() and len(a) > 50
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)


def test_a_killed_run_with_a_model_file_teacher_resumes(tmp_path, teacher_file):
    from conftest import kill_after_first_backup

    args = ["--task=classify", "--preset=smoke", "--cls_inits=label", "--noexport", "--verbose=2",
            f"--model_dir={tmp_path}", f"--teacher={teacher_file}", "--student_epochs=3"]
    kill_after_first_backup(args, tmp_path / "classify" / "backup" / "student_d8_label_soft")
    out = ok(run_main(*args))
    assert "classify/student_d8_label_soft: resuming at epoch" in out
    record = json.loads((tmp_path / "classify" / "stages" / "student_d8_label_soft.json").read_text())
    assert record["resumed_at_epoch"] >= 2 and len(record["history"]["loss"]) == 3
    assert record["teacher_source"].startswith("model:face.keras:")


MIRRORED_EXTERNAL = """
    from keras_kd.teachers import external

    def build():
        s = freeze_bn(resnet.build_model(8, 32, 4, name="student"))
        s.set_weights(s0)
        t = external.load_model(PATH, 32)
        d = Distiller(s, t, task_loss=lambda yy, o: losses.label_ce(yy["label"], o["logits"]),
                      targets=[("emb_cos", 1.0)])
        d.adapters["emb_cos"].set_weights([np.full((256, 16), 0.01, "float32"), np.zeros(16, "float32")])
        return d

    compare_mirrored(build)
"""


def test_a_model_file_teacher_under_mirrored_strategy_matches_one_device(teacher_file):
    """The external teacher loaded in the strategy scope: one step, 2 CPU replicas × 4 images == 1 device × 8."""
    import textwrap

    from conftest import run_two_cpu_script
    r = run_two_cpu_script(textwrap.dedent(MIRRORED_EXTERNAL).replace("PATH", repr(str(teacher_file))))
    assert r["replicas"] == [1, 2] and r["change"] > 1e-3
    np.testing.assert_allclose(r["loss"][1], r["loss"][0], rtol=1e-5)
    assert r["diff"] < 1e-4, r


def test_a_linear_head_gives_an_embedding_teacher_cross_fitted_logits(tmp_path):
    from keras_kd.teachers import linear_head
    data = tmp_path / "data"
    synthetic.write_synthetic(str(data), 4, 12, 40, seed=0, log=lambda *_: None)
    recs = {s: outputs.data_records(str(data), s) for s in ("train", "test")}
    srcs = list(recs["train"]["source"]) + list(recs["test"]["source"])
    labels = np.concatenate([recs["train"]["label"], recs["test"]["label"]])
    rng = np.random.default_rng(0)
    emb = np.eye(4)[labels] * 3.0 + rng.normal(0, 0.3, (len(srcs), 4))  # identity clusters
    path = tmp_path / "t.npz"
    outputs.save(str(path), srcs, ["train"] * len(recs["train"]["source"]) + ["test"] * len(recs["test"]["source"]),
                 {"embedding": emb}, str(data), teacher="clusters")
    stats = linear_head.add_logits(str(path), str(data), out=str(tmp_path / "l.npz"), folds=3, log=lambda *_: None)
    assert stats["cv_top1"] > 0.9
    cache = outputs.load(str(tmp_path / "l.npz"), str(data))
    assert cache.outputs["logits"].shape == (len(recs["train"]["source"]), 4)
    assert (cache.outputs["logits"].argmax(1) == recs["train"]["label"]).mean() > 0.9
    with pytest.raises(DataError, match=r"l\.npz: already has out_logits"):
        linear_head.add_logits(str(tmp_path / "l.npz"), str(data), log=lambda *_: None)
    # With flipped views: the same heads give the flipped embeddings' logits (the un-flipped ones unchanged).
    flip = emb + rng.normal(0, 0.3, emb.shape)
    outputs.save(str(path), srcs, ["train"] * len(recs["train"]["source"]) + ["test"] * len(recs["test"]["source"]),
                 {"embedding": emb, "embedding_flip": flip}, str(data), teacher="clusters")
    linear_head.add_logits(str(path), str(data), out=str(tmp_path / "f.npz"), folds=3, log=lambda *_: None)
    got = outputs.load(str(tmp_path / "f.npz"), str(data)).outputs
    assert set(got) == {"embedding", "embedding_flip", "hidden", "hidden_flip", "logits", "logits_flip"}
    np.testing.assert_allclose(got["logits"], cache.outputs["logits"], rtol=1e-5, atol=1e-5)
    assert (got["logits_flip"].argmax(1) == recs["train"]["label"]).mean() > 0.9
    assert not np.allclose(got["logits_flip"], got["logits"])
