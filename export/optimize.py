"""tensorflow-model-optimization on a student, with distillation still on: QAT and magnitude pruning.

Both fine-tune the student with keras_kd.distill.distiller.Distiller against the task's frozen teacher:
task loss + α·soft targets (α = Config.alpha, τ = Config.temperature), through training.fit_stage as the
stages train (the run's optimizer, schedule and weight decay, NaN guard), peaking at Config.lr_init. Only the soft target is kept: the
hidden target's dense adapter was a training device and was not saved, and a fresh one would first pull
the student towards a random projection.

What tfmot supports in these models (measured with tfmot 0.8.1, tf_keras 2.21):

- ``quantize_model`` refuses the models as they are. Supported by its default 8-bit registry: Conv2D,
  DepthwiseConv2D and Dense (with the BatchNormalization that follows them, folded), ReLU, Add,
  MaxPooling2D, GlobalAveragePooling2D, Reshape, Flatten, ZeroPadding2D, Activation("linear"). Not in it:
  a standalone BatchNormalization (ResNet's ``input_bn``), Rescaling (the landmark head's
  ``landmarks_units``, the mobile trunks' input scaling), UnitNormalization (the embedding), PReLU
  (MobileFaceNet) and Multiply (MobileNetV3's hard-swish and squeeze-excite). Those get
  ``OutputQuantizeConfig``: their output quantized, their math (and PReLU's slopes) float during
  training; the converter then quantizes them as MUL/ADD, MUL + MAXIMUM, L2_NORMALIZATION (PReLU enters
  QAT as ``int8_ops.MaxPReLU``, the same function in ops LiteRT runs fast in int8).
- MobileNetV3's hard-sigmoid is built by keras.applications as ``ReLU6(x + 3) * (1/6)`` whose scalar
  ``+``/``*`` are TFOpLambda layers: tfmot cannot even wrap those (quantize_apply fails rebuilding the
  model: "'list' object has no attribute 'dtype'"), so they are left unannotated. They stay float during
  QAT, between the quantized outputs of the ReLU6 and Multiply around them, and the converter calibrates
  their int8 ranges on the representative images as for post-training int8 (``float_layers`` in the
  record counts them).
- Any other layer type stops QAT at once, before any training, with one line naming the architecture and
  the unsupported types (``OptimizeError``; ``check_quantizable``).
- ``prune_low_magnitude`` is applied to Conv2D and Dense layers only (the layers with full kernels; not the
  depthwise convolutions, whose few weights each filter's whole output depends on); the rest of the model
  is cloned as is.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from export import int8_ops, saved_model
from export.int8_ops import inbound_layers, is_op_layer
from export.saved_model import ExportError
from keras_kd import training
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.distill.distiller import Distiller
from keras_kd.keras import keras
from keras_kd.tasks import TASKS, Stage

import tensorflow_model_optimization as tfmot  # noqa: E402  (after keras_kd.keras: TF_USE_LEGACY_KERAS)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (  # noqa: E402
    default_8bit_quantize_registry as _registry)  # which layers quantize_apply takes without a config

qk = tfmot.quantization.keras
# Layers the default 8-bit registry lacks but whose output can simply be quantized (see module docstring).
OUTPUT_ONLY_TYPES = (keras.layers.BatchNormalization, keras.layers.Rescaling, keras.layers.UnitNormalization,
                     keras.layers.PReLU, keras.layers.Multiply)
FOLDED_BN_AFTER = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
PRUNABLE_TYPES = (keras.layers.Conv2D, keras.layers.Dense)
# TFOpLambda ops left float during QAT (element-wise, each a TFLite builtin with an int8 kernel).
FLOAT_OPS = ("__operators__.add", "__operators__.sub", "math.add", "math.subtract", "math.multiply",
             "math.truediv", "__operators__.truediv")
_REGISTRY = _registry.Default8BitQuantizeRegistry()


class OptimizeError(ExportError):
    """QAT or pruning cannot be applied; the message names the layer or setting."""


class OutputQuantizeConfig(qk.QuantizeConfig):
    """Quantizes only the layer's output (8-bit, asymmetric, moving-average range); weights stay float."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [qk.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                     narrow_range=False)]

    def get_config(self):
        return {}


def _needs_output_config(layer) -> bool:
    if isinstance(layer, keras.layers.BatchNormalization):
        return not any(isinstance(l, FOLDED_BN_AFTER) for l in inbound_layers(layer))
    return isinstance(layer, OUTPUT_ONLY_TYPES)


def _left_float(layer) -> bool:
    return is_op_layer(layer) and layer.get_config().get("function") in FLOAT_OPS


def _quantizable(layer) -> bool:
    return isinstance(layer, (keras.layers.InputLayer, keras.layers.BatchNormalization, *OUTPUT_ONLY_TYPES)) \
        or _left_float(layer) or _REGISTRY.supports(layer)


def check_quantizable(model: keras.Model, arch: str = "") -> None:
    """Raises OptimizeError, one line naming ``arch`` and every layer type QAT cannot handle (with the first
    few layers of each), when ``model`` has any; cheap: nothing is built."""
    bad: Dict[str, list] = {}
    for layer in model.layers:
        if not _quantizable(layer):
            what = type(layer).__name__
            if is_op_layer(layer):
                what += f"({layer.get_config().get('function')})"
            bad.setdefault(what, []).append(layer.name)
    if bad:
        listed = "; ".join(f"{t} ({', '.join(n[:3])}{', ...' if len(n) > 3 else ''})" for t, n in sorted(bad.items()))
        raise OptimizeError(f"quantization-aware training: {arch or model.name}: tfmot cannot quantize layer "
                            f"type(s) {listed}")


def quantize_aware(model: keras.Model, arch: str = "") -> Tuple[keras.Model, list, list]:
    """The QAT model of ``model`` (quantize_apply copies the weights), the names of the layers given
    OutputQuantizeConfig and those left float (see the module docstring). ``arch`` names the
    architecture in errors."""
    check_quantizable(model, arch)
    # PReLU as MaxPReLU, as post-training int8 (no PRELU op); hard-swish needs no rewrite here: QAT quantizes
    # its Multiply's output, which already keeps the converter from fusing it into HARD_SWISH.
    model = int8_ops.rewrite(model, hard_swish=False)
    output_only, left_float = [], []

    def annotate(layer):
        if _left_float(layer):
            left_float.append(layer.name)
            return layer
        if _needs_output_config(layer):
            output_only.append(layer.name)
            return qk.quantize_annotate_layer(layer, OutputQuantizeConfig())
        return qk.quantize_annotate_layer(layer)

    try:
        annotated = keras.models.clone_model(model, clone_function=annotate)  # wraps model's own layers
        with qk.quantize_scope({"OutputQuantizeConfig": OutputQuantizeConfig, "MaxPReLU": int8_ops.MaxPReLU}):
            return qk.quantize_apply(annotated), output_only, left_float
    except Exception as e:  # noqa: BLE001  one line, whatever tfmot raised (it names the layer)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise OptimizeError(f"quantization-aware training: {arch or model.name}: {type(e).__name__}: {first}") \
            from None


def prunable(model: keras.Model, schedule) -> keras.Model:
    """``model`` with prune_low_magnitude on every Conv2D and Dense layer.

    The clone wraps and shares ``model``'s own layers (tfmot's way), so training it changes ``model``:
    pass a freshly loaded copy.
    """
    def wrap(layer):
        if isinstance(layer, PRUNABLE_TYPES):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return keras.models.clone_model(model, clone_function=wrap)


def schedule_for(target: float, total_steps: int):
    """PolynomialDecay from 0 to ``target``, reached at ~75% of the steps, so the last quarter fine-tunes
    at the final sparsity; masks update every 1/10 of the run (every step on tiny runs)."""
    if not 0.0 < target < 1.0:
        raise OptimizeError(f"--prune: target sparsity must be in (0, 1), got {target}")
    if total_steps < 2:
        raise OptimizeError("pruning needs at least 2 training steps")
    frequency = max(1, min(100, total_steps // 10))
    end = max(frequency, frequency * int(0.75 * (total_steps - 1) // frequency))
    return tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=float(target),
                                                begin_step=0, end_step=end, frequency=frequency)


def kernel_sparsity(model: keras.Model) -> Dict[str, float]:
    """Fraction of exactly-zero weights over all Conv2D/Dense kernels ("sparsity") and the lowest of any
    one layer ("min_layer_sparsity"), measured on the weights themselves."""
    zeros = total = 0
    lowest = 1.0
    for layer in model.layers:
        if isinstance(layer, PRUNABLE_TYPES):
            k = layer.kernel.numpy()
            z = int(np.sum(k == 0))
            zeros, total = zeros + z, total + k.size
            lowest = min(lowest, z / k.size)
    return {"sparsity": zeros / max(total, 1), "min_layer_sparsity": lowest, "pruned_weights": float(total)}


def gzip_size(path: str) -> int:
    """Bytes of the file gzipped (level 9): what sparsity buys on the wire and on disk."""
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9))


def distill_fine_tune(student: keras.Model, teacher: keras.Model, stage: Stage, data_dir: str, cfg: Config,
                      epochs: int, callbacks: Sequence = ()) -> dict:
    """Trains ``student`` for ``epochs`` with the stage's task loss + soft targets from ``teacher``
    (frozen), with the run's optimizer, schedule and weight decay peaking at the initialized learning rate
    (Config.lr_init: the student is trained already), on one device (export is a single-process step,
    whatever strategy the run trained with); returns {"steps", "train_seconds", "loss"}."""
    task = TASKS[stage.task]
    train_cfg = task.batch_config(cfg, training=True)
    meta_steps = _train_steps(data_dir, train_cfg.batch_size)
    distiller = Distiller(student, teacher, task.task_loss(stage, cfg), (("soft", cfg.alpha),),
                          cfg.temperature, cfg.tau2)
    ds = pipeline.make_dataset(data_dir, "train", train_cfg, training=True)
    # One step an execution: pruning's UpdatePruningStep counts the steps from batch callbacks.
    fitted = training.fit_stage(distiller, cfg, cfg.lr_init, ds, epochs, meta_steps, callbacks=callbacks)
    if fitted.nan is not None:
        raise OptimizeError(f"{stage.name}: loss became NaN/Inf during fine-tuning")
    loss = [round(float(v), 5) for v in fitted.history["loss"]]  # per epoch
    return {"steps": epochs * meta_steps, "train_seconds": round(fitted.seconds, 1), "loss": loss}


def _train_steps(data_dir: str, batch_size: int) -> int:
    from keras_kd.data.example import read_meta
    return max(1, int(read_meta(data_dir)["splits"]["train"]) // batch_size)


def steps_per_epoch(task: str, data_dir: str, cfg: Config) -> int:
    return _train_steps(data_dir, TASKS[task].batch_config(cfg, training=True).batch_size)


def qat(student: keras.Model, teacher: keras.Model, stage: Stage, data_dir: str, cfg: Config,
        epochs: int) -> Tuple[keras.Model, dict]:
    """Quantization-aware training with distillation; returns the QAT model and what was done."""
    qmodel, output_only, left_float = quantize_aware(student, stage.arch)
    info = distill_fine_tune(qmodel, teacher, stage, data_dir, cfg, epochs)
    info["output_quantize_config_layers"] = output_only
    info["float_layers"] = len(left_float)
    return qmodel, info


def prune(student: keras.Model, teacher: keras.Model, stage: Stage, data_dir: str, cfg: Config,
          epochs: int, target: float) -> Tuple[keras.Model, dict]:
    """Magnitude pruning to ``target`` sparsity with distillation, then strip_pruning: returns the plain
    (pruned) Keras model and what was done, including the measured sparsity."""
    total = epochs * steps_per_epoch(stage.task, data_dir, cfg)
    schedule = schedule_for(target, total)
    pmodel = prunable(student, schedule)
    info = distill_fine_tune(pmodel, teacher, stage, data_dir, cfg, epochs,
                             callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pmodel)
    info.update(kernel_sparsity(stripped), target_sparsity=float(target), schedule_end_step=int(schedule.end_step),
                schedule_frequency=int(schedule.frequency))
    return stripped, info


def temp_savedmodel(model: keras.Model, task: str, image_size: int, parent: str) -> str:
    """A throw-away SavedModel with only ``serving_crop`` (what the converter reads) under ``parent``."""
    path = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    shutil.rmtree(path)
    saved_model.save(model, task, image_size, path, signatures=("serving_crop",))
    return path


def remove_tree(path: Optional[str]) -> None:
    if path and os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)
