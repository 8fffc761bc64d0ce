"""A teacher keras-kd did not train: a Keras model file run online (``--teacher``), or a file of its outputs
(``--teacher_outputs``, teachers/outputs.py). Either replaces every teacher stage of the plan: no teacher
is trained, the students distil from this one, and it is evaluated like any model for its row in results.

The model's contract is a small JSON (``--teacher_spec``; default ``<file>.json`` beside a model file,
``<dir>/keras_kd_teacher.json`` in a SavedModel folder); every field is optional:

    {"outputs": {"embedding": "emb", "logits": "fc"},     model outputs (dict keys, output layer names or
                                                           indices) that are keras-kd's embedding (K),
                                                           logits, hidden, landmarks
     "input": {"size": 112, "range": [0, 255], "mean": [127.5, 127.5, 127.5], "std": [128, 128, 128],
               "channels": "rgb"}}                         what the model takes

keras-kd feeds [0, 1] RGB crops of --image_size; the wrapper resizes them to ``size`` (default: the model's
input size), maps [0, 1] to ``range``, subtracts ``mean``, divides by ``std`` and reverses the channels for
``bgr``, all inside the wrapped model, so the Distiller sees a plain Keras model with named outputs.
Without ``outputs``: a model whose outputs are a dict keeps the keys it shares with keras-kd's names; a
single-output model is an embedding. ``hidden`` (the β target K) is the embedding when not named.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Dict, Optional

import numpy as np

from keras_kd import metrics
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.data.example import DataError
from keras_kd.keras import keras, tf
from keras_kd.models import network
from keras_kd.teachers import outputs as outputs_lib

NAMES = outputs_lib.NAMES  # embedding, logits, hidden, landmarks
SPEC_IN_DIR = "keras_kd_teacher.json"


class TeacherError(DataError):
    """The external teacher cannot be used; the message names the file and what is wrong."""


def spec_path(path: str, spec: str = "") -> str:
    return spec or (os.path.join(path, SPEC_IN_DIR) if os.path.isdir(path) else path + ".json")


def read_spec(path: str, spec: str = "") -> dict:
    where = spec_path(path, spec)
    if not os.path.exists(where):
        if spec:
            raise TeacherError(f"{spec}: no such teacher spec file")
        return {}
    try:
        with open(where) as f:
            out = json.load(f)
    except (OSError, ValueError) as e:
        raise TeacherError(f"{where}: not a JSON teacher spec ({str(e).splitlines()[0]})") from None
    bad = set(out) - {"outputs", "input", "description"}
    bad |= {f"outputs.{k}" for k in out.get("outputs", {}) if k not in NAMES}
    bad |= {f"input.{k}" for k in out.get("input", {}) if k not in ("size", "range", "mean", "std", "channels")}
    if bad:
        raise TeacherError(f"{where}: unknown field(s) {', '.join(sorted(bad))}; outputs may name "
                           f"{', '.join(NAMES)}, input may give size, range, mean, std, channels")
    if out.get("input", {}).get("channels", "rgb") not in ("rgb", "bgr"):
        raise TeacherError(f"{where}: input.channels must be rgb or bgr")
    return out


class _SavedModelCall(keras.layers.Layer):
    """A TensorFlow SavedModel's serving signature as a layer (a SavedModel Keras cannot load)."""

    def __init__(self, path: str, **kw):
        super().__init__(trainable=False, **kw)
        self._obj = tf.saved_model.load(path)
        if "serving_default" not in self._obj.signatures:
            raise TeacherError(f"{path}: the SavedModel has no serving_default signature")
        self._fn = self._obj.signatures["serving_default"]
        self._arg = list(self._fn.structured_input_signature[1])[0]

    def call(self, x):
        return dict(self._fn(**{self._arg: x}))


def _load_inner(path: str):
    """(callable, input size or None, output names): a Keras model file or folder, else a raw SavedModel."""
    if not os.path.exists(path):
        raise TeacherError(f"{path}: no such teacher model file or folder")
    try:
        model = keras.models.load_model(path, compile=False)
        return model, model.input_shape[1] if len(model.input_shape) == 4 else None, model.output_names
    except Exception as keras_error:  # noqa: BLE001 - any failure: try the next format, then report both
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
            layer = _SavedModelCall(path, name="teacher_savedmodel")
            shape = layer._fn.structured_input_signature[1][layer._arg].shape
            return layer, shape[1] if shape.rank == 4 else None, list(layer._fn.structured_outputs)
        raise TeacherError(f"{path}: cannot load a Keras model from it "
                           f"({type(keras_error).__name__}: {str(keras_error).splitlines()[0]})") from None


class _Preprocess(keras.layers.Layer):
    """keras-kd's [0, 1] RGB crops → what the teacher takes (size, range, mean/std, channel order)."""

    def __init__(self, size: int, lo: float, hi: float, mean, std, bgr: bool, **kw):
        super().__init__(trainable=False, **kw)
        self.size, self.lo, self.hi, self.mean, self.std, self.bgr = size, lo, hi, mean, std, bgr

    def call(self, x):
        if x.shape[1] != self.size:
            x = tf.image.resize(x, [self.size, self.size], method="bilinear")
        x = x * (self.hi - self.lo) + self.lo
        x = (x - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)
        return x[..., ::-1] if self.bgr else x

    def get_config(self):
        return {**super().get_config(), "size": self.size, "lo": self.lo, "hi": self.hi, "mean": self.mean,
                "std": self.std, "bgr": self.bgr}


def _pick(raw, names, want):
    """The raw model output `want` names: a dict key, an output name or an index."""
    if isinstance(raw, dict):
        return raw[want]
    seq = raw if isinstance(raw, (list, tuple)) else [raw]
    return seq[names.index(want)] if isinstance(want, str) else seq[int(want)]


def load_model(path: str, image_size: int, spec: str = "") -> keras.Model:
    """The teacher as a frozen functional model: [0, 1] RGB crops of image_size → {name: tensor}.

    Call it inside the strategy scope, so its variables are the strategy's (mirrored, multi-worker).
    """
    contract = read_spec(path, spec)
    inner, native_size, names = _load_inner(path)
    names = list(names)
    mapping = dict(contract.get("outputs", {}))
    if not mapping:
        mapping = {k: k for k in names if k in NAMES} or ({"embedding": 0} if len(names) == 1 else {})
        if not mapping:
            raise TeacherError(f"{path}: its outputs ({', '.join(map(str, names))}) are not keras-kd's "
                               f"({', '.join(NAMES)}); name them in {spec_path(path, spec)}")
    for k, v in mapping.items():
        if isinstance(v, str) and v not in names:
            raise TeacherError(f"{path}: has no output {v!r} (for {k}); its outputs: {', '.join(map(str, names))}")
        if not isinstance(v, str) and not 0 <= int(v) < len(names):
            raise TeacherError(f"{path}: has no output #{v} (for {k}); it has {len(names)}")
    inp = contract.get("input", {})
    size = int(inp.get("size") or native_size or image_size)
    lo, hi = (float(v) for v in inp.get("range", (0.0, 1.0)))
    mean = [float(v) for v in np.broadcast_to(inp.get("mean", 0.0), [3])]
    std = [float(v) for v in np.broadcast_to(inp.get("std", 1.0), [3])]
    images = keras.Input((image_size, image_size, 3), name="images")
    x = _Preprocess(size, lo, hi, mean, std, inp.get("channels", "rgb") == "bgr", name="teacher_input")(images)
    try:
        raw = inner(x, training=False) if isinstance(inner, keras.Model) else inner(x)
    except Exception as e:  # noqa: BLE001 - an input it cannot take, whatever the framework says
        raise TeacherError(f"{path}: cannot take {size}×{size}×3 input ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]})") from None
    out = {k: _pick(raw, names, v) for k, v in mapping.items()}
    if "hidden" not in out and "embedding" in out:
        out["hidden"] = out["embedding"]
    out = {k: keras.layers.Activation("linear", name=k)(v) for k, v in out.items()}
    model = keras.Model(images, out, name="teacher_external")
    model.trainable = False
    return model


class _Recorded(keras.layers.Layer):
    """An output known only from a file: right shape for building the Distiller, fails if ever run."""

    def __init__(self, shape, path: str, **kw):
        super().__init__(trainable=False, **kw)
        self.shape_, self.path = tuple(shape), path

    def call(self, x):
        check = tf.debugging.Assert(False, [f"{self.path}: the teacher is a file of outputs; it cannot run "
                                            "on images (targets need outputs it does not hold?)"])
        with tf.control_dependencies([check]):
            return tf.zeros(tf.concat([tf.shape(x)[:1], self.shape_], 0))


def recorded_model(widths: Dict[str, tuple], image_size: int, path: str) -> keras.Model:
    """A stand-in with the outputs' shapes: the Distiller builds its adapters from it and reads the
    outputs themselves from the batch (targets["teacher"])."""
    images = keras.Input((image_size, image_size, 3), name="images")
    out = {k: _Recorded(s, path, name=k)(images) for k, s in widths.items()}
    return keras.Model(images, out, name="teacher_outputs")


class ExternalTeacher:
    """The teacher of a run given by --teacher or --teacher_outputs."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.offline = bool(cfg.teacher_outputs)
        self.path = cfg.teacher_outputs or cfg.teacher
        self._model: Optional[keras.Model] = None
        self._caches: Dict[str, object] = {}
        self.params = self.flops = 0  # unknown for a file of outputs
        if self.offline:
            _, _, _, outs = outputs_lib.read(self.path)
            self.widths = {k: tuple(v.shape[1:]) for k, v in outputs_lib.views(outs).items()}
        else:
            with tf.init_scope():
                probe = load_model(self.path, cfg.image_size, cfg.teacher_spec)
            self.widths = {k: tuple(v.shape[1:]) for k, v in probe.output.items()}
            inner = [layer for layer in probe.layers if isinstance(layer, keras.Model)]
            self.params = int(probe.count_params())
            self.flops = network.count_flops(inner[0]) if inner else 0

    @functools.cached_property
    def identity(self) -> str:
        """What a distilled student's record stores, so a student of another teacher is never reused
        (hashed once per run: every stage asks for it)."""
        h = hashlib.sha256()
        files = [self.path] if os.path.isfile(self.path) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(self.path) for f in fs)
        for p in files:
            with open(p, "rb") as f:
                h.update(f.read())
        return f"{'outputs' if self.offline else 'model'}:{os.path.basename(self.path.rstrip('/'))}:{h.hexdigest()[:16]}"

    def check(self, stage, num_classes: int) -> None:
        """Raises TeacherError when a stage's distillation terms need outputs this teacher lacks."""
        from keras_kd.distill import methods
        for name, _ in stage.targets:
            for key in methods.REGISTRY[name].keys:
                if key not in self.widths:
                    raise TeacherError(
                        f"{self.path}: has no {key!r} output, which {stage.task}/{stage.name}'s {name!r} target "
                        f"compares (it has {', '.join(sorted(self.widths))}); choose other targets (--methods, "
                        f"--kd, --ab_grid) or name the output in its spec")
            if "logits" in methods.REGISTRY[name].keys and self.widths["logits"][-1] != num_classes:
                raise TeacherError(f"{self.path}: its logits have {self.widths['logits'][-1]} classes, the data "
                                   f"{num_classes}: {name!r} needs the same classes; use embedding targets "
                                   "(emb_cos, emb_sim, hidden)")

    def model(self) -> keras.Model:
        """The teacher to distil from (in the strategy scope of the caller)."""
        if self.offline:
            return recorded_model(self.widths, self.cfg.image_size, self.path)
        return load_model(self.path, self.cfg.image_size, self.cfg.teacher_spec)

    def cache(self, data_dir: str):
        """The file's outputs of the train records (offline teacher); None for a model run online."""
        if not self.offline:
            return None
        if data_dir not in self._caches:
            self._caches[data_dir] = outputs_lib.load(self.path, data_dir, "train")
        return self._caches[data_dir]

    def evaluate(self, task, data_dir: str, in_cfg: pipeline.InputConfig) -> Dict[str, float]:
        """The teacher's metrics on the test split, from what it outputs (a teacher without logits has no
        top-1, one without landmarks no NRMSE)."""
        if self.offline:
            got = outputs_lib.eval_outputs(self.path, data_dir)
            if got is None:
                return {}
            out, tgt = got, {"label": got["label"], "source": got["source"]}
        else:
            from keras_kd.tasks.base import predict
            ds = pipeline.make_dataset(data_dir, "test", in_cfg, training=False)
            out, tgt = predict(self.model(), ds, sorted(self.widths))
        return outputs_metrics(task.name, out, tgt, data_dir, self.cfg.seed)


def outputs_metrics(task: str, out: dict, tgt: dict, data_dir: str, seed: int) -> Dict[str, float]:
    """Metrics of a task computed from raw outputs, as far as the outputs allow."""
    from keras_kd.tasks import verification
    m: Dict[str, float] = {}
    if "logits" in out and task in ("classify",):
        m["top1"] = metrics.top1(out["logits"], tgt["label"])
    emb = out.get("embedding", out.get("hidden"))
    if emb is not None and task in ("classify", "verify"):
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        m["rank1"] = metrics.rank1(emb, tgt["label"])
        pm, _ = verification.pair_metrics(emb, tgt, data_dir, seed, every_pair=task == "verify")
        m.update(pm if task == "verify" else {k: v for k, v in pm.items() if k == "pair_acc"})
    return {k: float(v) for k, v in m.items()}
