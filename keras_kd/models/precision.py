"""The precision a network computes in: float32, or mixed bfloat16 (bfloat16 arithmetic, float32 variables).

Why: on CPUs with bfloat16 instructions (Intel AMX's matrix units, or AVX512_BF16 as on AMD EPYC) oneDNN
runs ResNet-50's convolutions in bfloat16 and the teacher, the costliest network of a run, trains and predicts
faster (bench/RESULTS.md sections 10 and 12). The small students are slower in bfloat16 on either (casts around
every layer cost more than their thin convolutions save, section 4), and so is every network on a CPU without
those instructions: "auto" gives bfloat16 to teachers on such CPUs only. Outputs (and the features
distillation reads) are cast to float32, Keras' advice, so losses and metrics are computed as in float32.
"""
from __future__ import annotations

import contextlib
from typing import Dict

from keras_kd import cpu
from keras_kd.keras import keras, tf

CHOICES = ("auto", "float32", "bfloat16")
_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # /proc/cpuinfo's names of the bfloat16 instructions


def resolve(choice: str) -> str:
    """float32 or bfloat16: `choice`, with auto = bfloat16 on a CPU with bfloat16 instructions (AMX or
    AVX512_BF16) and no GPU in sight."""
    if choice not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "auto":
        bf16 = not BF16_FLAGS.isdisjoint(cpu.features()) and not tf.config.list_physical_devices("GPU")
        return "bfloat16" if bf16 else "float32"
    return choice


def of_role(role: str, choice: str) -> str:
    """What a network of `role` ("teacher" or "student") computes in under --teacher_precision=`choice`."""
    return resolve(choice) if role == "teacher" else "float32"


@contextlib.contextmanager
def building(precision: str):
    """Layers created inside compute in `precision` (resolved)."""
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(_POLICY[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def float32(tensors: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """The same named tensors, those not in float32 cast to it by a layer named <name>_float32."""
    return {k: v if v.dtype == tf.float32 else
            keras.layers.Activation("linear", dtype="float32", name=f"{k}_float32")(v)
            for k, v in tensors.items()}
