"""Export of the mobile student architectures (models/archs.py): SavedModel, TFLite fp32/fp16/dynamic/int8
in LiteRT with their latency, QAT, pruning, through export.run as main.py and `python -m export` call it.

One smoke-sized verification run (32 px, one epoch per stage) trains the teacher (the frozen teacher of
QAT / pruning with KD) and one student of each of MobileFaceNet and MobileNetV3-Small (from scratch,
`_pretrain`; MobileNetV3-Large is the same keras.applications builder with the same layer types: its
SavedModel and fp32 file are checked on a freshly built network below, its training with every loss in
tests/test_archs.py). Verification, because its output, the unit-length embedding, cannot saturate: after
one epoch (5 steps) the classification logits of MobileFaceNet are in the thousands, and softmax
probabilities of 0 and 1 would match whatever the export did. After 5 steps the moving batch-norm
statistics are still close to their initial values, so embeddings of different faces can be nearly
parallel: here int8 and QAT files are checked for running and staying close, not for their rank-1, and the
numerical match of SavedModel and fp32 TFLite with Keras is checked again on freshly built networks whose
batch-norm statistics are set from a batch (test_savedmodel_and_fp32_match_keras_when_outputs_differ).
Each is exported once for the module with every format and QAT; pruning on MobileNetV3 Small only (the
one whose TFOpLambda layers clone_model must carry; MobileFaceNet prunes the same Conv2D/Dense layers). ResNet-50/8's export, QAT and pruning are tests/test_export.py's.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import PAPER_RECIPE

TOL = 1e-4  # as tests/test_export.py: SavedModel and fp32 TFLite against Keras, in output units
INT8_OUTPUT_TOL = 0.1  # as tests/test_export.py: int8 against float, per embedding component
TASK = "verify"
STUDENTS = {"mobilefacenet": "student_mbf_pretrain", "mobilenet_v3_small": "student_mv3s_pretrain"}
MOBILE = ["mobilefacenet", "mobilenet_v3_small", "mobilenet_v3_large"]
PRUNED = "mobilenet_v3_small"
KINDS = ("fp32", "fp16", "dynamic", "int8")


def _smoke_config(model_dir):
    from keras_kd.config import Config
    # tests/test_export.py's smoke Config, with one student per mobile architecture (no ResNet student)
    return Config(model_dir=str(model_dir), preset="smoke", image_size=32, students=(8,),
                  student_arch=tuple(STUDENTS), batch_size=16, align_batch_size=16, ids_per_batch=4,
                  images_per_id=4, teacher_epochs=1, student_epochs=1, fitnet_epochs=1, transfer_epochs=1,
                  teacher_transfer_epochs=0, pretrain_transfer_epochs=0, pretrain_epochs=1,
                  synthetic_identities=8, synthetic_images=16,
                  synthetic_size=40, verify_softmax=(False, True), landmark_head="pooled", verbose=0, resnet_blocks=(1, 1, 1, 1),
                  **{**PAPER_RECIPE, "lr_scratch": 0.05})


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from keras_kd.stages import Runner
    r = Runner(_smoke_config(tmp_path_factory.mktemp("arch_export_runs")), log=lambda s: None)
    r.ensure(TASK, "teacher")
    for name in STUDENTS.values():
        r.ensure(TASK, name)
    return r


@pytest.fixture(scope="module")
def exports(runner):
    import export
    common = dict(qat=True, qat_epochs=1, representative_samples=16, update_results=False)
    recs = export.run(runner, TASK, [n for a, n in STUDENTS.items() if a != PRUNED], **common)
    recs.update(export.run(runner, TASK, [STUDENTS[PRUNED]], prune=0.5, prune_epochs=1, **common))
    return {arch: recs[name] for arch, name in STUDENTS.items()}


def _dir(runner, arch):
    return Path(runner.cfg.model_dir) / TASK / "export" / STUDENTS[arch]


def _ops(path) -> set:
    from ai_edge_litert.interpreter import Interpreter
    return {op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(STUDENTS))
def test_stage_record_and_savedmodel_match_keras(runner, exports, arch):
    import tensorflow as tf
    from export import saved_model, verification_samples
    stage = json.loads((Path(runner.cfg.model_dir) / TASK / "stages" / f"{STUDENTS[arch]}.json").read_text())
    assert stage["arch"] == arch
    rec = exports[arch]
    assert rec["saved_model"]["max_abs_diff"] <= TOL, rec["saved_model"]["checks"]
    # and again here, outside export.verify: serving_crop on test crops against the Keras model
    model = runner.load(TASK, STUDENTS[arch])
    crops = np.stack([s["crop"] for s in verification_samples(runner.data_dir(TASK), runner.cfg, TASK, n=4)])
    loaded = tf.saved_model.load(str(_dir(runner, arch) / "saved_model" / "1"))
    assert set(loaded.signatures) == set(saved_model.SIGNATURES)
    got = loaded.signatures["serving_crop"](image=tf.constant(crops * 255.0))["embedding"].numpy()
    want = model(crops, training=False)["embedding"].numpy()
    np.testing.assert_allclose(got, want, atol=TOL)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(STUDENTS))
def test_every_tflite_format_runs_in_litert(runner, exports, arch):
    from ai_edge_litert.interpreter import Interpreter
    from keras_kd.data.example import read_meta
    rec = exports[arch]
    for kind in KINDS:
        r = rec[f"tflite_{kind}"]
        path = _dir(runner, arch) / "tflite" / f"model_{kind}.tflite"
        assert path.exists() and r["path"] == str(path) and r["size_bytes"] == path.stat().st_size
        sigs = Interpreter(model_path=str(path)).get_signature_list()
        assert list(sigs) == ["serving_crop"] and sigs["serving_crop"]["outputs"] == ["embedding"]
        assert np.isfinite(r["rank1"]) and r["latency_ms"] > 0, (kind, r)
    assert rec["tflite_fp32"]["max_abs_diff"] <= TOL, rec["tflite_fp32"]
    # The same embeddings to TOL give the same rank-1 but for near ties: after 5 steps the embeddings of
    # different faces can be nearly parallel (module docstring), so one test image may change its neighbour.
    n_test = read_meta(runner.data_dir(TASK))["splits"]["test"]
    assert abs(rec["tflite_fp32"]["rank1"] - rec["keras"]["rank1"]) <= 1 / n_test + 1e-9
    assert rec["tflite_int8"]["max_abs_diff"] <= INT8_OUTPUT_TOL, rec["tflite_int8"]
    assert rec["tflite_int8"]["size_bytes"] < 0.4 * rec["tflite_fp32"]["size_bytes"]
    for kind in ("int8", "qat_int8"):  # ops LiteRT's XNNPACK delegate does not run in int8 (bench/RESULTS.md)
        assert not {"PRELU", "HARD_SWISH"} & _ops(_dir(runner, arch) / "tflite" / f"model_{kind}.tflite"), kind
    assert rec["tflite_fp16"]["size_bytes"] < 0.6 * rec["tflite_fp32"]["size_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(STUDENTS))
def test_qat_per_architecture(runner, exports, arch):
    rec = exports[arch]
    qat = rec["qat_int8"]
    assert (_dir(runner, arch) / "tflite" / "model_qat_int8.tflite").exists()
    assert 0.0 <= qat["rank1"] <= 1.0 and qat["steps"] >= 1 and qat["latency_ms"] > 0
    assert qat["size_bytes"] < 0.4 * rec["tflite_fp32"]["size_bytes"]
    layers = qat["output_quantize_config_layers"]
    assert "embedding" in layers  # UnitNormalization
    if arch == "mobilefacenet":  # every PReLU, and the input's Rescaling
        assert "mbf_input_scale" in layers and sum(n.endswith("_prelu") for n in layers) == 33
        assert qat["float_layers"] == 0
    else:  # hard-swish / squeeze-excite Multiply layers; hard-sigmoid's scalar + and * stay float
        assert "mv3_input_scale" in layers and any(n.endswith("squeeze_excite/Mul") for n in layers)
        assert qat["float_layers"] > 0


@pytest.mark.slow
def test_pruning_mobilenet_v3(runner, exports):
    rec = exports[PRUNED]
    pruned = rec["pruned_fp32"]
    assert (_dir(runner, PRUNED) / "tflite" / "model_pruned_fp32.tflite").exists()
    assert 0.0 <= pruned["rank1"] <= 1.0 and pruned["steps"] >= 1 and pruned["latency_ms"] > 0
    assert pruned["sparsity"] >= 0.5 - 0.05 and pruned["min_layer_sparsity"] >= 0.5 - 0.05
    assert pruned["gzip_bytes"] < 0.85 * pruned["dense_gzip_bytes"]
    assert "pruned_fp32" not in exports["mobilefacenet"]


@pytest.mark.parametrize("arch", MOBILE)
def test_savedmodel_and_fp32_match_keras_when_outputs_differ(arch, tmp_path):
    """export.saved_model.save and export.tflite.convert on a network whose embeddings of different images
    differ (batch-norm moving statistics set from one batch, unlike a 5-step student's): serving_crop and
    the fp32 file match Keras within TOL, far below how much two images' embeddings differ."""
    import tensorflow as tf
    from export import saved_model, tflite
    from keras_kd.keras import keras
    from keras_kd.models import archs
    x = np.random.default_rng(0).uniform(0, 1, (16, 32, 32, 3)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = archs.build_model(arch, 1, 32, 8, ("embedding",), name="student")
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # the next training call sets the moving statistics to the batch's
    model(x, training=True)
    want = model(x[:8], training=False)["embedding"].numpy()
    assert np.mean((want @ want.T)[np.triu_indices(8, 1)]) < 0.9  # the images' embeddings differ
    path = str(tmp_path / "saved_model")
    saved_model.save(model, "verify", 32, path, signatures=("serving_crop",))
    got = tf.saved_model.load(path).signatures["serving_crop"](image=tf.constant(x[:8] * 255.0))["embedding"]
    np.testing.assert_allclose(got.numpy(), want, atol=TOL)
    fp32 = tmp_path / "model_fp32.tflite"
    fp32.write_bytes(tflite.convert(path, "fp32"))
    np.testing.assert_allclose(tflite.LiteModel(str(fp32))(x[:8] * 255.0)["embedding"], want, atol=TOL)


def test_mobilenet_v3_large_is_quantization_aware_like_small():
    """The trained fixture exports Small; Large, built by the same keras.applications code, wraps for QAT
    the same way (hard-swish TFOpLambda ops left float, Multiply output-only) and runs."""
    from export import optimize
    from keras_kd.models import archs
    model = archs.build_model("mobilenet_v3_large", 1, 32, 8, ("embedding",), name="student")
    qat, output_only, left_float = optimize.quantize_aware(model, "mobilenet_v3_large")
    assert left_float and any("multiply" in n for n in output_only)
    out = qat(np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32), training=False)
    assert np.all(np.isfinite(out["embedding"]))


# ---------------------------------------------------------------------------------------- fast units

def test_prelu_is_exported_as_max_with_the_same_outputs():
    """MobileFaceNet's PReLU layers trace as max(x, α·x) (int8_ops.MaxPReLU: no int8 PRELU op in LiteRT's
    XNNPACK) with the same outputs for slopes ≤ 1, negative ones too; a layer with a slope above 1, where
    the two differ, stays PReLU; a network with nothing to rewrite is not copied."""
    from export import int8_ops
    from keras_kd.keras import keras
    from keras_kd.models import archs
    model = archs.build_model("mobilefacenet", 1, 32, 8, ("embedding",), name="student")
    prelus = [layer for layer in model.layers if type(layer) is keras.layers.PReLU]
    rng = np.random.default_rng(0)
    for layer in prelus:
        layer.set_weights([rng.uniform(-0.5, 1.0, layer.get_weights()[0].shape).astype(np.float32)])
    steep = prelus[3]
    steep.set_weights([np.full(steep.get_weights()[0].shape, 1.5, np.float32)])
    copy = int8_ops.rewrite(model)
    kinds = {layer.name: type(layer).__name__ for layer in copy.layers if isinstance(layer, keras.layers.PReLU)}
    assert kinds.pop(steep.name) == "PReLU" and len(kinds) == 32 and set(kinds.values()) == {"MaxPReLU"}
    x = rng.uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    want, got = model(x, training=False), copy(x, training=False)
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-6)
    resnet = archs.build_model("resnet50", 8, 32, 8, name="student", blocks=(1, 1, 1, 1))
    assert int8_ops.rewrite(resnet) is resnet


def test_hard_swish_is_exported_unfused_with_the_same_outputs():
    """MobileNetV3's hard-swish Multiply layers (not its squeeze-excite ones) trace as x·min(relu(x/6 + 1/2), 1)
    (int8_ops.HardSwish: the converter's fused HARD_SWISH has no int8 kernel in XNNPACK), the same
    outputs up to float rounding."""
    from export import int8_ops
    from keras_kd.keras import keras
    from keras_kd.models import archs
    model = archs.build_model("mobilenet_v3_small", 1, 32, 8, ("embedding",), name="student")
    x = np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 3)).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # moving statistics from a batch, so the activations span hard-swish's bends
    model(x, training=True)
    multiplies = [layer for layer in model.layers if isinstance(layer, keras.layers.Multiply)]
    swishes = {layer.name for layer in multiplies if int8_ops.is_hard_swish(layer)}
    assert swishes and all(not n.endswith("squeeze_excite/Mul") for n in swishes)
    assert len(swishes) == sum(not layer.name.endswith("squeeze_excite/Mul") for layer in multiplies)
    copy = int8_ops.rewrite(model)
    assert {layer.name for layer in copy.layers if type(layer).__name__ == "HardSwish"} == swishes
    want, got = model(x, training=False), copy(x, training=False)
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-4, atol=1e-5)  # rounding
    qat_copy = int8_ops.rewrite(model, hard_swish=False)  # what QAT takes (optimize.quantize_aware)
    assert not any(type(layer).__name__ == "HardSwish" for layer in qat_copy.layers)


def test_qat_unsupported_layer_is_one_line_error_before_any_export(monkeypatch, tmp_path):
    """The heatmap landmark head's SoftArgmax is a custom layer tfmot has no recipe for: export.run with
    qat stops before exporting anything, with one line naming the architecture and the layer type."""
    import importlib

    import export
    from export import optimize
    from keras_kd.models import archs
    from keras_kd.stages import Runner
    from keras_kd.tasks import Stage
    export_run = importlib.import_module("export.run")  # the module: the package's export.run is its function
    model = archs.build_model("mobilenet_v3_small", 1, 32, 4, ("landmarks",), landmark_head="heatmap", width=0.35)
    stage = Stage("align", "student_mv3s_x0p35_pretrain", 1, "classify", 1, 0.01, arch="mobilenet_v3_small",
                  width=0.35)
    monkeypatch.setattr(export_run, "load_stage", lambda runner, task, name: (model, stage, {}))
    monkeypatch.setattr(export_run, "_export_one", lambda *a: pytest.fail("exported before the QAT check"))
    runner = Runner(_smoke_config(tmp_path), log=lambda s: None)
    with pytest.raises(optimize.OptimizeError) as err:
        export.run(runner, "align", [stage.name], qat=True, update_results=False)
    msg = str(err.value)
    assert isinstance(err.value, export.ExportError) and "\n" not in msg  # the CLI prints "error: <msg>", exit 2
    assert msg == ("quantization-aware training: mobilenet_v3_small: tfmot cannot quantize layer type(s) "
                   "SoftArgmax (landmarks)"), msg  # the hard-swish TFOpLambda and Multiply layers are handled
    with pytest.raises(optimize.OptimizeError, match="SoftArgmax"):
        optimize.quantize_aware(model, "mobilenet_v3_small")


def test_latency_ms_of_a_tiny_tflite_file_and_of_a_reused_record(tmp_path):
    import tensorflow as tf
    from export import tflite
    from export.run import _add_latency

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="image")])
    def crop(image):
        return {"probabilities": tf.nn.softmax(tf.reduce_mean(image, axis=[1, 2]))}

    module = tf.Module()
    module.serving_crop = crop
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_crop": crop.get_concrete_function()})
    path = tmp_path / "m.tflite"
    path.write_bytes(tflite.convert(str(tmp_path / "sm"), "fp32"))
    ms = tflite.latency_ms(str(path), runs=5, warmup=1)
    assert isinstance(ms, float) and np.isfinite(ms) and ms > 0  # a time, not a speed check (bench/ has those)
    # an export.json from before latency_ms, reused (same checkpoint and options), gets it added
    record = {"name": "m", "keras": {"rank1": 1.0}, "tflite_fp32": {"path": str(path), "size_bytes": 1}}
    saved = tmp_path / "export.json"
    saved.write_text(json.dumps(record))
    assert _add_latency(record, str(saved))["tflite_fp32"]["latency_ms"] > 0
    assert json.loads(saved.read_text()) == record
