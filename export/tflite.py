"""LiteRT (TFLite) conversion of an exported SavedModel, and evaluation of .tflite files on the test split.

Files, next to the SavedModel: ``<model_dir>/<task>/export/<name>/tflite/model_<kind>.tflite`` with

    fp32     float32 weights and math: the reference (matches Keras within 1e-4)
    fp16     float16 weights, float32 math (half the size; GPU delegates run it in fp16)
    dynamic  int8 weights, float activations (dynamic-range quantization; no calibration data)
    int8     full integer: int8 weights and activations, calibrated on training images (representative
             dataset from keras_kd.data.pipeline); float input/output by default, ``int8_io``: uint8 input
             (raw pixels: scale ≈ 1, zero point 0, read them from the input details) and int8 outputs

What the converter allows: each file holds ONE signature, ``serving_crop``, converted from the SavedModel's
signature of that name, with the same input name (``image``) and output names. Its input is the
already-resized and centre-cropped image, float32 [N, S, S, 3] RGB 0..255 (or uint8 with ``int8_io``):
``serving_default``/``serving_uint8`` need the antialiased resize (tf.ScaleAndTranslate) and
``serving_bytes`` needs tf.DecodeImage, neither of which is a TFLite builtin op ("neither a custom op nor a
flex op"; converting them would need the Flex delegate, which phones do not ship by default). Landmarks
come out in the crop's pixel coordinates.

Each file's record also has ``latency_ms``: the median wall time of one single-image call of its
``serving_crop`` signature in the LiteRT interpreter with 1 thread (default delegate, XNNPACK on CPU),
over LATENCY_RUNS calls after LATENCY_WARMUP (``latency_ms``). It is this machine's number, for comparing
formats and architectures side by side, not a phone's.
"""
from __future__ import annotations

import statistics
import time
import warnings
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence

import numpy as np

from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.keras import keras, tf
from keras_kd.tasks import TASKS
from keras_kd.tasks.base import predict

SIGNATURE = "serving_crop"
KINDS = ("fp32", "fp16", "dynamic", "int8")
HEADLINE = {name: task.headline for name, task in TASKS.items()}  # the task's metric in export records
LATENCY_RUNS, LATENCY_WARMUP = 20, 3


def convert(saved_model_dir: str, kind: str, representative: Optional[Callable[[], Iterator]] = None,
            int8_io: bool = False) -> bytes:
    """The .tflite bytes of the SavedModel's ``serving_crop`` signature, quantized as ``kind`` says."""
    conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[SIGNATURE])
    if kind == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif kind == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif kind == "int8":
        if representative is None:
            raise ValueError("full-integer conversion needs a representative dataset")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            conv.inference_input_type = tf.uint8   # camera pixels as they come
            conv.inference_output_type = tf.int8
    elif kind != "fp32":
        raise ValueError(f"unknown TFLite kind {kind!r}; choose from {', '.join(KINDS)}")
    with warnings.catch_warnings():  # calibration runs tf.lite.Interpreter, which warns of its deprecation
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        return conv.convert()


def representative_dataset(data_dir: str, cfg: Config, task: str, samples: int = 100) -> Callable[[], Iterator]:
    """Calibration images for full-integer quantization: ``samples`` training images, pre-processed as
    at evaluation (no augmentation), one per step, as 0..255 crops (the ``serving_crop`` input)."""
    def gen():
        ds = pipeline.make_dataset(data_dir, "train", _eval_config(cfg, task), training=False)
        n = 0
        for images, _ in ds:
            for img in images.numpy():
                if n >= samples:
                    return
                yield {"image": (img[None] * 255.0).astype(np.float32)}
                n += 1
    return gen


def _eval_config(cfg: Config, task: str) -> pipeline.InputConfig:
    return TASKS[task].batch_config(cfg, training=False)


class LiteModel:
    """One .tflite file loaded in the LiteRT interpreter, called like the float SavedModel signature:
    float crops 0..255 in, float outputs out (quantized inputs/outputs are converted on the way)."""

    def __init__(self, path: str, threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter
        self.interpreter = Interpreter(model_path=path, num_threads=threads)
        self.signature = self.interpreter.get_signature_runner(SIGNATURE)
        details = self.signature.get_input_details()
        self.input = details["image"]
        self.outputs = self.signature.get_output_details()

    def __call__(self, images_0_255: np.ndarray) -> Dict[str, np.ndarray]:
        x = np.asarray(images_0_255, np.float32)
        dtype = self.input["dtype"]
        if dtype != np.float32:
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        out = self.signature(image=x)
        result = {}
        for k, v in out.items():
            scale, zero = self.outputs[k]["quantization"]
            if v.dtype in (np.int8, np.uint8) and scale:
                v = (v.astype(np.float32) - zero) * scale
            result[k] = v
        return result


def latency_ms(path: str, runs: int = LATENCY_RUNS, warmup: int = LATENCY_WARMUP, threads: int = 1) -> float:
    """Median milliseconds of one single-image ``serving_crop`` call of the .tflite file at ``path`` with
    ``threads`` interpreter threads, over ``runs`` calls after ``warmup`` (the input's own dtype and shape,
    fixed random pixels; inference only, no numpy conversion around it)."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=threads)
    call = interpreter.get_signature_runner(SIGNATURE)
    spec = call.get_input_details()["image"]
    shape = [1 if int(d) < 0 else int(d) for d in spec["shape_signature"]]
    dtype = np.dtype(spec["dtype"])
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    else:
        x = rng.uniform(0.0, 255.0, shape).astype(dtype)
    for _ in range(max(1, warmup)):
        call(image=x)
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        call(image=x)
        times.append(time.perf_counter() - t0)
    return round(1e3 * statistics.median(times), 4)


def to_model_units(task: str, outputs: Mapping[str, np.ndarray], image_size: int) -> Dict[str, np.ndarray]:
    """Signature outputs (crop pixels for landmarks) → the Keras model's units (crop fractions)."""
    return TASKS[task].to_model_units(dict(outputs), image_size)


def task_metric(task: str, outputs: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """The task's headline metric from signature outputs in model units, by the task's own `metrics`."""
    t = TASKS[task]
    return {t.headline: t.metrics(dict(outputs), dict(targets))[t.headline]}


def keras_outputs(model: keras.Model, task: str, ds: tf.data.Dataset) -> tuple:
    """(outputs named as the signatures', in model units; targets) of a Keras model over ``ds``."""
    t = TASKS[task]
    out, targets = predict(model, ds, list(t.model_output_keys))
    return t.model_unit_outputs(out), targets


def evaluate(paths: Mapping[str, str], model: keras.Model, task: str, data_dir: str, cfg: Config,
             keras_models: Optional[Mapping[str, keras.Model]] = None) -> Dict[str, dict]:
    """Runs every .tflite in ``paths`` ({label: file}) and the Keras model over the test split.

    Returns {label: {metric: value, "max_abs_diff": max |tflite − keras| over the comparable outputs
    (probabilities, landmarks as crop fractions, embedding), "seconds": interpreter time over the split,
    "latency_ms": ``latency_ms`` (one image, 1 thread)}}, plus "keras":
    the Keras model's metric computed the same way. ``keras_models`` ({label: model}) adds the metrics of
    other Keras models (e.g. the QAT model before conversion).
    """
    ds = pipeline.make_dataset(data_dir, "test", _eval_config(cfg, task), training=False)
    ref, targets = keras_outputs(model, task, ds)
    results = {"keras": task_metric(task, ref, targets)}
    for label, other in (keras_models or {}).items():
        results[label] = task_metric(task, keras_outputs(other, task, ds)[0], targets)
    for label, path in paths.items():
        runner = LiteModel(path)
        got: Dict[str, list] = {}
        t0 = time.time()
        for images, _ in ds:
            for k, v in runner(images.numpy() * 255.0).items():
                got.setdefault(k, []).append(v)
        seconds = time.time() - t0
        outs = to_model_units(task, {k: np.concatenate(v) for k, v in got.items()}, cfg.image_size)
        rec = task_metric(task, outs, targets)
        rec["max_abs_diff"] = max(float(np.max(np.abs(outs[k] - ref[k]))) for k in ref)
        rec["seconds"] = round(seconds, 3)
        rec["latency_ms"] = latency_ms(path)
        results[label] = rec
    return results


def signature_io(path: str) -> dict:
    """{"inputs": {name: (shape_signature, dtype)}, "outputs": {...}} of the file's serving_crop signature,
    for the export record and docs."""
    runner = LiteModel(path, threads=1)

    def desc(d: Mapping[str, dict]) -> dict:
        return {k: {"shape": [int(s) for s in v["shape_signature"]], "dtype": np.dtype(v["dtype"]).name,
                    **({"scale": float(v["quantization"][0]), "zero_point": int(v["quantization"][1])}
                       if v["quantization"][0] else {})} for k, v in d.items()}

    return {"signature": SIGNATURE, "inputs": desc({"image": runner.input}), "outputs": desc(runner.outputs)}


def kinds_from_formats(formats: Sequence[str]) -> list:
    """'tflite_int8' → 'int8' for the TFLite formats among ``formats``."""
    return [kind for kind in KINDS if f"tflite_{kind}" in formats]
