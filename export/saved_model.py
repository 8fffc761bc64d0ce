"""SavedModel export of one student network, with the evaluation pre-processing inside the graph.

Layout (TF Serving's versioned layout; Serving loads the highest integer version under the base path):

    <model_dir>/<task>/export/<name>/saved_model/<version>/saved_model.pb, variables/

Signatures (every one returns the same named outputs, the task's ``serving_output_names``):

    serving_default  image        float32 [N, H, W, 3], RGB pixel values 0..255 (not 0..1), any H, W
    serving_uint8    image        uint8   [N, H, W, 3], RGB, any H, W (a decoded image as is)
    serving_bytes    image_bytes  string  [N], encoded JPEG/PNG/BMP/GIF (what REST clients send as b64)
    serving_crop     image        float32 [N, S, S, 3], RGB 0..255, already resized and centre-cropped: the
                                  network alone plus /255 and the output mapping (what the .tflite files hold)

Pre-processing is the evaluation pipeline's (keras_kd.data.pipeline): resize the whole image to R×R with
R = round(S / 0.875) (antialiased, aspect not kept), round to integers as the pipeline stores them, take the
centre S×S crop, divide by 255. The networks normalize their input themselves (ResNet: batch normalization;
MobileFaceNet, MobileNetV3: × 2 − 1), so there is no mean subtraction.

Outputs are the task's (keras_kd/tasks: ``serving_output_names``, made by ``serving_outputs``): classify →
``probabilities`` [N, C] (softmax), ``class_id`` [N] int32; align → ``landmarks`` [N, 5, 2] (x, y) in the
pixel coordinates of the image that was passed in (crop and resize undone; for serving_crop, the crop's
pixels); verify → ``embedding`` [N, D], unit length.

Only TensorFlow ops are in the graph: the SavedModel loads with ``tf.saved_model.load`` (as TF Serving
does) without keras_kd or Keras installed. The network is traced as ``export.int8_ops.rewrite(model)``:
PReLU and MobileNetV3's hard-swish written as the same functions in ops LiteRT runs in int8 (the .tflite
files are converted from this graph).
"""
from __future__ import annotations

import base64
import json
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from export import int8_ops
from keras_kd.data import pipeline
from keras_kd.keras import keras, tf
from keras_kd.tasks import TASKS

SIGNATURES = ("serving_default", "serving_uint8", "serving_bytes", "serving_crop")
TOLERANCE = 1e-4  # max |SavedModel − Keras| accepted at export, in the model's own output units


class ExportError(RuntimeError):
    """An export cannot be made or does not match its Keras model; the message names the file and why."""


def resize_size(image_size: int) -> int:
    """R: the side the whole image is resized to before the centre crop, as the training pipeline."""
    return pipeline.InputConfig(image_size=image_size, batch_size=1).resize_size


def crop_offset(image_size: int) -> int:
    """Top-left corner of the evaluation (centre) crop in the R×R resized image, as the pipeline."""
    return (resize_size(image_size) - image_size) // 2


def input_scale(hw, resize: int):
    """(x, y) factors [N, 1, 2] from resized-image pixels to input pixels for images of height, width ``hw``:
    the ``to_input`` of a task's ``serving_outputs``."""
    hw = tf.cast(hw, tf.float32)
    return tf.reshape(tf.stack([hw[..., 1], hw[..., 0]], axis=-1), [-1, 1, 2]) / float(resize)


class ServingModule(tf.Module):
    """The student network between the pre-processing and the named, post-processed outputs.

    The Keras model is held untracked and only its variables are tracked: tracking the model would make
    tf.saved_model.save trace and serialize every layer's call for Keras (32 s instead of 3 s for a /8
    student, measured), which TF Serving never uses. It traces ``int8_ops.rewrite(model)``.
    """

    def __init__(self, model: keras.Model, task: str, image_size: int):
        super().__init__(name="serving")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        model = int8_ops.rewrite(model)
        self.model_variables = list(model.variables)
        object.__setattr__(self, "_keras_model", model)  # not tracked, see the class docstring
        self.task, self.size = task, int(image_size)
        self.resize, self.offset = resize_size(image_size), crop_offset(image_size)
        s = self.size
        self.serving_default = tf.function(
            self._float, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
        self.serving_uint8 = tf.function(
            self._uint8, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")])
        self.serving_bytes = tf.function(
            self._bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        self.serving_crop = tf.function(
            self._crop, input_signature=[tf.TensorSpec([None, s, s, 3], tf.float32, name="image")])

    def signatures(self, names: Sequence[str] = SIGNATURES) -> dict:
        return {n: getattr(self, n).get_concrete_function() for n in names}

    # ---- pre-processing --------------------------------------------------------------------------
    def _resize_crop(self, images):
        """float [N, H, W, 3] 0..255 → the pipeline's evaluation crop [N, S, S, 3] in [0, 1]."""
        x = tf.image.resize(images, [self.resize, self.resize], antialias=True)
        x = tf.clip_by_value(tf.round(x), 0.0, 255.0)  # the pipeline stores the resized image as uint8
        x = x[:, self.offset:self.offset + self.size, self.offset:self.offset + self.size, :]
        return x / 255.0

    def _outputs(self, crops, to_input):
        """Runs the network; ``to_input`` [N or 1, 1, 2] scales resized-image pixels to input pixels."""
        raw = self._keras_model(crops, training=False)
        return TASKS[self.task].serving_outputs(raw, self.size, self.offset, to_input)

    def _scale(self, hw):
        return input_scale(hw, self.resize)

    # ---- signatures ------------------------------------------------------------------------------
    def _float(self, image):
        return self._outputs(self._resize_crop(image), self._scale(tf.shape(image)[1:3]))

    def _uint8(self, image):
        return self._float(tf.cast(image, tf.float32))

    def _bytes(self, image_bytes):
        def one(data):
            img = tf.io.decode_image(data, channels=3, expand_animations=False)
            img.set_shape([None, None, 3])
            return self._resize_crop(tf.cast(img, tf.float32)[None])[0], tf.shape(img)[:2]

        crops, hw = tf.map_fn(one, image_bytes, fn_output_signature=(
            tf.TensorSpec([self.size, self.size, 3], tf.float32), tf.TensorSpec([2], tf.int32)))
        return self._outputs(crops, self._scale(hw))

    def _crop(self, image):
        return self._outputs(image / 255.0, None)


def save(model: keras.Model, task: str, image_size: int, path: str,
         signatures: Sequence[str] = SIGNATURES) -> ServingModule:
    """Writes the SavedModel of ``model`` to ``path`` (a version directory); returns the module."""
    module = ServingModule(model, task, image_size)
    tf.saved_model.save(module, path, signatures=module.signatures(signatures))
    return module


# ---------------------------------------------------------------------------------------- verification

def expected_outputs(task: str, keras_out: Mapping[str, np.ndarray], image_size: int,
                     input_hw: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """What each signature should return, computed in numpy from the Keras model's raw outputs by the
    task's ``expected_serving_outputs`` (independent of the graph's post-processing: the check of it).
    ``input_hw`` [N, 2] (height, width) of the input images maps landmarks to input pixels; None gives the
    crop's pixels (serving_crop and the .tflite files).
    """
    return TASKS[task].expected_serving_outputs(dict(keras_out), image_size, input_hw)


def output_units(task: str, image_size: int, input_hw: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Divisors that bring each output back to the model's own units (landmarks: crop fractions), so
    one tolerance fits every signature."""
    return TASKS[task].serving_units(image_size, input_hw)


def max_diffs(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
              units: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """max |got − want| per float output (in model units); integer outputs count mismatching rows."""
    out = {}
    for k, w in want.items():
        g = np.asarray(got[k])
        if g.shape != w.shape:
            raise ExportError(f"output {k!r}: shape {g.shape}, expected {w.shape}")
        if np.issubdtype(w.dtype, np.integer):
            out[k + "_mismatches"] = float(np.sum(g != w))
        else:
            out[k] = float(np.max(np.abs(g - w) / units.get(k, 1.0))) if w.size else 0.0
    return out


def verify(path: str, model: keras.Model, task: str, image_size: int, samples: Sequence[dict],
           tolerance: float = TOLERANCE) -> Dict[str, float]:
    """Loads ``path`` as TF Serving does and checks every signature against the Keras model.

    ``samples``: test images as dicts with "encoded" (file bytes), "crop" (the evaluation pipeline's
    [S, S, 3] input in [0, 1]) and "hw" (decoded height, width). Also checks a REST-style JSON
    ``{"instances": [{"b64": ...}]}`` round trip. Returns {signature/output: max diff}; raises ExportError
    when a float output differs by more than ``tolerance`` (class ids may differ only on near-ties).
    """
    loaded = tf.saved_model.load(path)
    missing = set(SIGNATURES) - set(loaded.signatures)
    if missing:
        raise ExportError(f"{path}: signatures {sorted(missing)} missing")
    crops = np.stack([s["crop"] for s in samples]).astype(np.float32)
    hw = np.array([s["hw"] for s in samples])
    raw = {k: v.numpy() for k, v in model(crops, training=False).items()}
    diffs: Dict[str, float] = {}

    def check(sig: str, got: Mapping[str, np.ndarray], input_hw) -> None:
        want = expected_outputs(task, raw, image_size, input_hw)
        for k, v in max_diffs(got, want, output_units(task, image_size, input_hw)).items():
            diffs[f"{sig}/{k}"] = v

    check("serving_crop", _call(loaded, "serving_crop", image=crops * 255.0), None)
    check("serving_bytes", _call(loaded, "serving_bytes", image_bytes=np.array([s["encoded"] for s in samples],
                                                                                dtype=object)), hw)
    rest = rest_predict(loaded.signatures["serving_bytes"],
                        {"instances": [{"b64": base64.b64encode(s["encoded"]).decode()} for s in samples]})
    check("rest_json", _rows_to_columns(rest["predictions"], TASKS[task].serving_output_names), hw)
    # serving_default / serving_uint8 take one tensor per batch: group the samples by decoded size.
    decoded = [tf.io.decode_image(s["encoded"], channels=3, expand_animations=False).numpy() for s in samples]
    for sig, dtype in (("serving_default", np.float32), ("serving_uint8", np.uint8)):
        got = {}
        for shape in sorted({d.shape for d in decoded}):
            idx = [i for i, d in enumerate(decoded) if d.shape == shape]
            out = _call(loaded, sig, image=np.stack([decoded[i] for i in idx]).astype(dtype))
            for k, v in out.items():
                got.setdefault(k, [None] * len(samples))
                for j, i in enumerate(idx):
                    got[k][i] = v[j]
        check(sig, {k: np.stack(v) for k, v in got.items()}, hw)
    _check_tolerance(path, task, diffs, raw, tolerance)
    return diffs


def _check_tolerance(path: str, task: str, diffs: Dict[str, float], raw: dict, tolerance: float) -> None:
    bad = {k: v for k, v in diffs.items() if not k.endswith("_mismatches") and not v <= tolerance}
    allowed = TASKS[task].allowed_mismatches(raw, tolerance)  # integer outputs (class ids) flip on near-ties
    bad.update({k: v for k, v in diffs.items() if k.endswith("_mismatches") and v > allowed})
    if bad:
        raise ExportError(f"{path}: differs from the Keras model by more than {tolerance:g}: "
                          + ", ".join(f"{k}={v:.3g}" for k, v in sorted(bad.items())))


def _call(loaded, signature: str, **inputs) -> Dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in loaded.signatures[signature](**{k: tf.constant(v) for k, v in
                                                                      inputs.items()}).items()}


# -------------------------------------------------------------------------------------- REST emulation

def rest_predict(signature, body: Union[str, Mapping]) -> dict:
    """TF Serving's REST ``:predict`` on a loaded signature, in-process (TF Serving cannot run here).

    Accepts the row format ``{"instances": [...]}`` and the columnar ``{"inputs": ...}``, with binary
    values as ``{"b64": "..."}`` objects, as the TF Serving REST API does; answers as it does:
    ``{"predictions": [...]}`` (rows; a dict per row when the signature has several outputs) or
    ``{"outputs": ...}``.
    """
    if isinstance(body, str):
        body = json.loads(body)
    args, kwargs = signature.structured_input_signature
    specs = dict(kwargs) or {spec.name: spec for spec in args}  # loaded signatures take keywords only
    names = sorted(specs)

    def decode(v):
        if isinstance(v, dict) and set(v) == {"b64"}:
            return base64.b64decode(v["b64"])
        if isinstance(v, list):
            return [decode(x) for x in v]
        return v

    if "instances" in body:
        rows = body["instances"]
        if len(names) == 1 and not (rows and isinstance(rows[0], dict) and names[0] in rows[0]):
            columns = {names[0]: [decode(r) for r in rows]}
        else:
            columns = {n: [decode(r[n]) for r in rows] for n in names}
    elif "inputs" in body:
        inputs = body["inputs"]
        columns = {n: decode(inputs[n]) for n in names} if isinstance(inputs, dict) and set(inputs) >= set(names) \
            else {names[0]: decode(inputs)}
    else:
        raise ValueError('request body needs "instances" or "inputs"')
    tensors = {n: tf.constant(np.array(columns[n], dtype=object if specs[n].dtype == tf.string
                                       else specs[n].dtype.as_numpy_dtype)) for n in names}
    out = {k: v.numpy() for k, v in signature(**tensors).items()}
    if "inputs" in body:
        return {"outputs": {k: v.tolist() for k, v in out.items()} if len(out) > 1 else
                next(iter(out.values())).tolist()}
    keys = sorted(out)
    n = len(next(iter(out.values())))
    if len(keys) == 1:
        return {"predictions": out[keys[0]].tolist()}
    return {"predictions": [{k: out[k][i].tolist() for k in keys} for i in range(n)]}


def _rows_to_columns(rows: Iterable, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    rows = list(rows)
    if len(keys) == 1:
        return {keys[0]: np.array(rows, np.float32)}
    return {k: np.array([r[k] for r in rows]) for k in keys}
