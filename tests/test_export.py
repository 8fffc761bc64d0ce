"""Export: SavedModel signatures, TFLite/LiteRT files, QAT and pruning, bad checkpoints (export/).

The models are smoke-sized and trained once for the module through the Runner (one epoch each: a classify
teacher and student, an align and a verify student); every export is made once and inspected by several
tests. TF Serving cannot run here: the SavedModel is loaded as Serving loads it (tf.saved_model.load, in a
process that never imports keras_kd) and its REST JSON format is emulated in-process.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PAPER_RECIPE

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4
# int8 against float, on the whole (tiny: 28-image) test split of smoke models: top-1 / rank-1 may move by
# a few images, NRMSE (percent of the inter-ocular distance) by a few points.
INT8_METRIC_TOL = {"top1": 0.15, "rank1": 0.15, "nrmse": 5.0}
# and per output, in model units (probabilities, crop fractions, unit-vector components)
INT8_OUTPUT_TOL = 0.1
STUDENT = {"classify": "student_d8_label", "align": "student_d8_pretrain", "verify": "student_d8_pretrain"}
OUTPUTS = {"classify": {"probabilities", "class_id"}, "align": {"landmarks"}, "verify": {"embedding"}}


def _smoke_config(model_dir):
    from keras_kd.config import Config
    # flags/presets.py "smoke"'s sizes, spelled as Config values (importing the flags module would define its
    # flags), with the paper's SGD and pooled landmark head these tests were written for.
    return Config(model_dir=str(model_dir), preset="smoke", image_size=32, students=(8,), batch_size=16,
                  align_batch_size=16, ids_per_batch=4, images_per_id=4, teacher_epochs=1, student_epochs=1,
                  fitnet_epochs=1, transfer_epochs=1, teacher_transfer_epochs=0, pretrain_transfer_epochs=0,
                  pretrain_epochs=1,
                  synthetic_identities=8, synthetic_images=16, synthetic_size=40, verify_softmax=(False, True),
                  landmark_head="pooled", verbose=0, resnet_blocks=(1, 1, 1, 1), **{**PAPER_RECIPE, "lr_scratch": 0.05})


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from keras_kd.stages import Runner
    r = Runner(_smoke_config(tmp_path_factory.mktemp("export_runs")), log=lambda s: None)
    r.ensure("classify", "teacher")  # the frozen teacher of QAT / pruning with KD
    for task, name in STUDENT.items():
        r.ensure(task, name)
    return r


@pytest.fixture(scope="module")
def exports(runner):
    import export
    out = {"classify": export.run(runner, "classify", [STUDENT["classify"]], qat=True, prune=0.5, qat_epochs=1,
                                  prune_epochs=1, representative_samples=32, update_results=False)}
    for task in ("align", "verify"):
        out[task] = export.run(runner, task, [STUDENT[task]], formats=("saved_model", "tflite_fp32", "tflite_int8"),
                               representative_samples=32, update_results=False)
    return {task: recs[STUDENT[task]] for task, recs in out.items()}


def _export_dir(runner, task):
    return Path(runner.cfg.model_dir) / task / "export" / STUDENT[task]


# ---------------------------------------------------------------------------------------- SavedModel

@pytest.mark.slow
@pytest.mark.parametrize("task", ["classify", "align", "verify"])
def test_savedmodel_signatures_named_and_match_keras(runner, exports, task):
    import tensorflow as tf
    from export import saved_model
    rec = exports[task]
    path = _export_dir(runner, task) / "saved_model" / "1"
    assert (path / "saved_model.pb").exists() and rec["saved_model"]["path"] == str(path)
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == set(saved_model.SIGNATURES)
    inputs = {"serving_default": ("image", tf.float32, [None, None, None, 3]),
              "serving_uint8": ("image", tf.uint8, [None, None, None, 3]),
              "serving_bytes": ("image_bytes", tf.string, [None]),
              "serving_crop": ("image", tf.float32, [None, 32, 32, 3])}
    for sig, (name, dtype, shape) in inputs.items():
        fn = loaded.signatures[sig]
        spec = fn.structured_input_signature[1]
        assert list(spec) == [name] and spec[name].dtype == dtype and spec[name].shape.as_list() == shape
        assert set(fn.structured_outputs) == OUTPUTS[task], sig
    # Every signature (and the REST round trip) was checked at export against the Keras model.
    checks = rec["saved_model"]["checks"]
    assert {c.split("/")[0] for c in checks} == set(saved_model.SIGNATURES) | {"rest_json"}
    assert max(v for k, v in checks.items() if not k.endswith("_mismatches")) <= TOL, checks


@pytest.mark.slow
def test_savedmodel_outputs_independently_of_export(runner, exports):
    """Re-checks serving_bytes / serving_uint8 here, outside export.verify: landmarks in input pixels."""
    import tensorflow as tf
    from export import saved_model, verification_samples
    task = "align"
    model = runner.load(task, STUDENT[task])
    samples = verification_samples(runner.data_dir(task), runner.cfg, task, n=4)
    loaded = tf.saved_model.load(str(_export_dir(runner, task) / "saved_model" / "1"))
    raw = {k: v.numpy() for k, v in model(np.stack([s["crop"] for s in samples]), training=False).items()}
    hw = np.array([s["hw"] for s in samples])
    want = saved_model.expected_outputs(task, raw, 32, hw)["landmarks"]
    got = loaded.signatures["serving_bytes"](image_bytes=tf.constant([s["encoded"] for s in samples]))["landmarks"]
    scale = saved_model.output_units(task, 32, hw)["landmarks"]
    assert np.max(np.abs(got.numpy() - want) / scale) <= TOL
    h, w = samples[0]["hw"]
    assert 0 <= want[..., 0].min() and want[..., 0].max() <= w * 1.5  # input pixels, not crop fractions
    pixels = tf.io.decode_image(samples[0]["encoded"], channels=3).numpy()[None]
    got8 = loaded.signatures["serving_uint8"](image=tf.constant(pixels))["landmarks"].numpy()
    assert np.max(np.abs(got8 - want[:1]) / scale[:1]) <= TOL


_NO_KERAS_KD = r"""
import base64, json, sys
import tensorflow as tf
path, png_path, jpeg_path = sys.argv[1:4]
m = tf.saved_model.load(path)
png, jpeg = open(png_path, "rb").read(), open(jpeg_path, "rb").read()
out = m.signatures["serving_bytes"](image_bytes=tf.constant([png, jpeg]))["landmarks"].numpy()
decoded = tf.io.decode_jpeg(jpeg, channels=3)[None]
as_uint8 = m.signatures["serving_uint8"](image=decoded)["landmarks"].numpy()
print(json.dumps({"bytes": out.tolist(), "uint8_jpeg": as_uint8.tolist(),
                  "keras_kd": "keras_kd" in sys.modules, "tf_keras": "tf_keras" in sys.modules}))
"""


@pytest.mark.slow
def test_savedmodel_loads_without_keras_kd(runner, exports, tmp_path):
    import tensorflow as tf
    from export import saved_model, verification_samples
    task = "align"
    sample = verification_samples(runner.data_dir(task), runner.cfg, task, n=1)[0]
    png, jpeg = tmp_path / "face.png", tmp_path / "face.jpg"
    png.write_bytes(sample["encoded"])
    jpeg.write_bytes(tf.io.encode_jpeg(tf.io.decode_image(sample["encoded"], channels=3), quality=95).numpy())
    # A serving client's environment: none of keras-kd's settings (TF_USE_LEGACY_KERAS would load tf_keras).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    proc = subprocess.run([sys.executable, "-c", _NO_KERAS_KD, str(_export_dir(runner, task) / "saved_model" / "1"),
                           str(png), str(jpeg)], cwd=tmp_path, env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["keras_kd"] is False and out["tf_keras"] is False
    model = runner.load(task, STUDENT[task])
    raw = {k: v.numpy() for k, v in model(sample["crop"][None], training=False).items()}
    want = saved_model.expected_outputs(task, raw, 32, np.array([sample["hw"]]))["landmarks"]
    scale = saved_model.output_units(task, 32, np.array([sample["hw"]]))["landmarks"]
    assert np.max(np.abs(np.array(out["bytes"][:1]) - want) / scale) <= TOL
    np.testing.assert_allclose(out["bytes"][1:], out["uint8_jpeg"], atol=1e-4)  # JPEG: both paths agree


@pytest.mark.slow
def test_saved_model_cli_lists_signatures(runner, exports):
    cli = shutil.which("saved_model_cli")
    cmd = [cli] if cli else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    path = _export_dir(runner, "classify") / "saved_model" / "1"
    proc = subprocess.run(cmd + ["show", "--all", "--dir", str(path)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for sig in ("serving_default", "serving_uint8", "serving_bytes", "serving_crop"):
        assert f"signature_def['{sig}']" in proc.stdout
    assert "outputs['probabilities']" in proc.stdout and "outputs['class_id']" in proc.stdout
    assert "inputs['image_bytes']" in proc.stdout and "DT_STRING" in proc.stdout


@pytest.mark.slow
def test_rest_json_round_trip(runner, exports):
    import tensorflow as tf
    from export import saved_model, verification_samples
    task = "classify"
    samples = verification_samples(runner.data_dir(task), runner.cfg, task, n=3)
    sig = tf.saved_model.load(str(_export_dir(runner, task) / "saved_model" / "1")).signatures["serving_bytes"]
    body = json.dumps({"instances": [{"b64": base64.b64encode(s["encoded"]).decode()} for s in samples]})
    reply = saved_model.rest_predict(sig, body)
    direct = sig(image_bytes=tf.constant([s["encoded"] for s in samples]))
    assert [r["class_id"] for r in reply["predictions"]] == direct["class_id"].numpy().tolist()
    np.testing.assert_allclose([r["probabilities"] for r in reply["predictions"]], direct["probabilities"].numpy(),
                               atol=1e-6)
    columnar = saved_model.rest_predict(sig, {"inputs": {"image_bytes": [{"b64": base64.b64encode(
        samples[0]["encoded"]).decode()}]}})
    assert columnar["outputs"]["class_id"] == direct["class_id"].numpy()[:1].tolist()


# ---------------------------------------------------------------------------------------- TFLite

@pytest.mark.slow
@pytest.mark.parametrize("task", ["classify", "align", "verify"])
def test_tflite_files_signatures_and_metrics(runner, exports, task):
    from ai_edge_litert.interpreter import Interpreter
    from export import tflite
    rec = exports[task]
    metric = tflite.HEADLINE[task]
    kinds = ["fp32", "fp16", "dynamic", "int8"] if task == "classify" else ["fp32", "int8"]
    assert rec["data"] == runner.meta(task)["name"] and rec["face_align"] is None  # what inputs it expects
    for kind in kinds:
        path = _export_dir(runner, task) / "tflite" / f"model_{kind}.tflite"
        r = rec[f"tflite_{kind}"]
        assert path.exists() and r["size_bytes"] == path.stat().st_size and np.isfinite(r[metric])
        sigs = Interpreter(model_path=str(path)).get_signature_list()
        assert list(sigs) == ["serving_crop"] and sigs["serving_crop"]["inputs"] == ["image"]
        assert set(sigs["serving_crop"]["outputs"]) == OUTPUTS[task]
    assert rec["tflite_fp32"]["max_abs_diff"] <= TOL, rec["tflite_fp32"]
    assert abs(rec["tflite_fp32"][metric] - rec["keras"][metric]) <= 1e-4  # no image changes its outcome
    assert abs(rec["tflite_int8"][metric] - rec["keras"][metric]) <= INT8_METRIC_TOL[metric], rec
    assert rec["tflite_int8"]["max_abs_diff"] <= INT8_OUTPUT_TOL, rec["tflite_int8"]
    assert rec["tflite_int8"]["size_bytes"] < 0.4 * rec["tflite_fp32"]["size_bytes"]


@pytest.mark.slow
def test_qat_and_pruning_produce_evaluated_tflite(runner, exports):
    rec = exports["classify"]
    qat, pruned = rec["qat_int8"], rec["pruned_fp32"]
    for r, name in ((qat, "model_qat_int8.tflite"), (pruned, "model_pruned_fp32.tflite")):
        assert (_export_dir(runner, "classify") / "tflite" / name).exists()
        assert 0.0 <= r["top1"] <= 1.0 and r["steps"] >= 1
    assert qat["output_quantize_config_layers"] == ["input_bn"]
    assert qat["size_bytes"] < 0.4 * rec["tflite_fp32"]["size_bytes"]
    assert pruned["sparsity"] >= 0.5 - 0.05 and pruned["min_layer_sparsity"] >= 0.5 - 0.05
    assert pruned["gzip_bytes"] < 0.85 * pruned["dense_gzip_bytes"]


@pytest.mark.slow
def test_an_export_is_reused_only_from_the_same_exporter(runner, exports):
    """The same checkpoint and options again: the files are reused; an export.json of another exporter
    version (one before a change that gives other files, e.g. PReLU traced as max) is made anew."""
    import export
    from export.run import EXPORTER_VERSION
    meta = _export_dir(runner, "verify") / "export.json"

    def again():
        return export.run(runner, "verify", [STUDENT["verify"]], formats=("saved_model", "tflite_fp32", "tflite_int8"),
                          representative_samples=32, update_results=False)

    # A key only the file on disk has tells a reused record (read back from it) from a new one.
    marked = {**json.loads(meta.read_text()), "reused_marker": True}
    meta.write_text(json.dumps(marked))
    reused = again()[STUDENT["verify"]]
    assert reused["reused_marker"] and reused["exporter"] == EXPORTER_VERSION
    marked.pop("exporter")
    meta.write_text(json.dumps(marked))
    remade = again()[STUDENT["verify"]]
    assert "reused_marker" not in remade and remade["exporter"] == EXPORTER_VERSION
    assert json.loads(meta.read_text())["exporter"] == EXPORTER_VERSION


# ---------------------------------------------------------------------------------------- bad input

@pytest.mark.slow
def test_missing_checkpoint_is_a_clear_error_and_leaves_nothing(runner, exports):
    import export
    with pytest.raises(export.ExportError, match=r"student_d8_scratch_soft\.weights\.h5: checkpoint missing"):
        export.run(runner, "classify", ["student_d8_scratch_soft"], update_results=False)
    assert not (Path(runner.cfg.model_dir) / "classify" / "export" / "student_d8_scratch_soft").exists()


@pytest.mark.slow
def test_corrupt_checkpoint_cli_one_line_and_no_partial_dir(runner, tmp_path):
    src = Path(runner.cfg.model_dir) / "classify" / "stages"
    stages = tmp_path / "classify" / "stages"
    stages.mkdir(parents=True)
    shutil.copy(src / "student_d8_label.json", stages)
    good = (src / "student_d8_label.weights.h5").read_bytes()
    (stages / "student_d8_label.weights.h5").write_bytes(good[: len(good) // 3])  # truncated copy
    proc = subprocess.run([sys.executable, "-m", "export", f"--model_dir={tmp_path}", "--task=classify",
                           f"--data={runner.data_dir('classify')}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {stages / 'student_d8_label.weights.h5'}: cannot load weights"), last
    export_dir = tmp_path / "classify" / "export"
    assert not export_dir.exists() or not any(export_dir.iterdir())


@pytest.mark.slow
def test_stage_of_other_data_is_refused_before_any_export(runner, tmp_path):
    """A stage trained on other data than the export's (e.g. synthetic faces version 1, exported once
    "synthetic" means version 2) would have its files evaluated and int8-calibrated on the wrong images."""
    import export
    from keras_kd.stages import Runner
    src = Path(runner.cfg.model_dir) / "classify" / "stages"
    stages = tmp_path / "classify" / "stages"
    stages.mkdir(parents=True)
    shutil.copy(src / "student_d8_label.weights.h5", stages)
    record = json.loads((src / "student_d8_label.json").read_text())
    assert record["data"] == runner.meta("classify")["name"]
    record["data"] = "synthetic-faces-60x80-56px-seed0"
    (stages / "student_d8_label.json").write_text(json.dumps(record))
    other = Runner(runner.cfg.replace(model_dir=str(tmp_path), data=runner.data_dir("classify")),
                   log=lambda s: None)
    with pytest.raises(export.ExportError, match=r"student_d8_label\.json: saved with "
                       r"data=synthetic-faces-60x80-56px-seed0 \(now .+\) \(pass --data=DIR"):
        export.run(other, "classify", ["student_d8_label"], update_results=False)
    assert not (tmp_path / "classify" / "export").exists()


# ---------------------------------------------------------------------------------------- fast units

def test_rest_predict_formats_and_b64():
    import tensorflow as tf
    from export.saved_model import rest_predict

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def one(image_bytes):
        return {"n": tf.strings.length(image_bytes)}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def two(x):
        return {"sum": tf.reduce_sum(x, -1), "first": x[:, 0]}

    b64 = lambda s: {"b64": base64.b64encode(s).decode()}  # noqa: E731
    assert rest_predict(one.get_concrete_function(), {"instances": [b64(b"abc"), b64(b"de")]}) == \
        {"predictions": [3, 2]}
    assert rest_predict(one.get_concrete_function(), '{"inputs": [{"b64": "YWJj"}]}') == {"outputs": [3]}
    reply = rest_predict(two.get_concrete_function(), {"instances": [[1, 2], [3, 4]]})
    assert reply == {"predictions": [{"first": 1.0, "sum": 3.0}, {"first": 3.0, "sum": 7.0}]}


def test_results_merge_adds_flat_metrics_and_table_columns(tmp_path):
    from export import merge_into_results
    from keras_kd import results
    res = results.Results(str(tmp_path / "classify" / "results.json"))
    res.data.update(task="classify", data="synthetic", preset="smoke", seed=0)
    res.upsert({"name": "student_d8_label", "role": "student", "width_divisor": 8, "init": "scratch",
                "targets": [], "alpha": 0.0, "beta": 0.0, "params": 1, "flops": 1,
                "metrics": {"top1": 0.5, "tflite_fp16_top1": 0.1}})
    res.save()
    rec = {"keras": {"top1": 0.5}, "tflite_int8": {"size_bytes": 2048, "top1": 0.25},
           "pruned_fp32": {"size_bytes": 4096, "top1": 0.4, "sparsity": 0.5}}
    merge_into_results(str(tmp_path), "classify", {"student_d8_label": rec})
    data = json.loads((tmp_path / "classify" / "results.json").read_text())
    results.validate(data)
    m = data["models"][0]
    assert m["metrics"] == {"top1": 0.5, "tflite_int8_top1": 0.25, "tflite_int8_kb": 2.0, "pruned_fp32_top1": 0.4,
                            "pruned_fp32_kb": 4.0, "pruned_sparsity": 0.5}  # stale tflite_fp16_top1 gone
    assert m["export"] == rec
    md = (tmp_path / "classify" / "results.md").read_text()
    assert "tflite_int8_top1 (%)" in md and "25.00" in md


def test_bad_format_is_rejected_before_any_work(tmp_path):
    import export
    from keras_kd.stages import Runner
    runner = Runner(_smoke_config(tmp_path), log=lambda s: None)
    with pytest.raises(export.ExportError, match="unknown export format"):
        export.run(runner, "align", ["x"], formats=("onnx",))
    with pytest.raises(export.ExportError, match="version"):
        export.run(runner, "align", ["x"], version=0)


def test_config_from_run_reads_config_json_and_flags_given_win(tmp_path):
    import dataclasses

    import export
    saved = dataclasses.asdict(_smoke_config("/elsewhere").replace(
        ids_per_batch=3, embedding_dim=24, seed=5, strategy="multi_worker", ab_grid=((0, 1), (0.5, 2))))
    saved["from_a_newer_version"] = 1  # ignored
    del saved["val_fraction"]  # a key an older version did not write: Config's default
    (tmp_path / "verify").mkdir()
    (tmp_path / "verify" / "config.json").write_text(json.dumps(saved))
    cfg = export.config_from_run(str(tmp_path), "verify", seed=9)
    assert (cfg.ids_per_batch, cfg.embedding_dim, cfg.image_size, cfg.students) == (3, 24, 32, (8,))
    assert cfg.ab_grid == ((0, 1), (0.5, 2)) and cfg.methods == () and cfg.val_fraction == 0.1
    assert (cfg.model_dir, cfg.task, cfg.seed, cfg.strategy) == (str(tmp_path), "verify", 9, "auto")
    assert export.config_from_run(str(tmp_path), "verify", data="/d", embedding_dim=0).data == "/d"
    (tmp_path / "verify" / "config.json").write_text("{")
    with pytest.raises(export.ExportError, match=r"verify/config\.json: unreadable run config"):
        export.config_from_run(str(tmp_path), "verify")
    # a run from before config.json: rebuilt from its stage records (none here)
    with pytest.raises(export.ExportError, match=r"align/stages: no trained stage"):
        export.config_from_run(str(tmp_path), "align")
