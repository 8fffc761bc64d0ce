"""What this machine's CPU offers, for the choices that depend on it: which Conv2D input gradient is faster
(conv_grad.py), whether the teacher runs in bfloat16 (models/precision.py) and TensorFlow's thread pools
(`thread_defaults`, applied where keras-kd imports TensorFlow: keras_kd/keras.py)."""
from __future__ import annotations

import functools
import os
from typing import Dict, Optional

FEW_CORES = 2  # up to this many cores, one thread per op (thread_defaults)


@functools.lru_cache(maxsize=None)
def features() -> frozenset:
    """The CPU's feature flags as Linux lists them (avx512f, amx_bf16, ...); empty where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has(flag: str) -> bool:
    return flag in features()


def cores() -> int:
    """The cores this process may run on (its affinity mask, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_defaults(n: Optional[int] = None) -> Dict[str, str]:
    """TensorFlow's thread-pool sizes (its TF_NUM_*_THREADS variables) for a machine of `n` cores.

    On FEW_CORES or fewer: one thread per op and two for independent ops (a convolution's input and weight
    gradients still run side by side). Split over two cores, the students' thin convolutions wait on each
    other more than they compute, while the teacher's gain nothing (`python -m bench.threads`, bench/RESULTS.md
    section 14). On more cores TensorFlow's own sizes (not measured). keras_kd/keras.py sets only what the user
    left unset.
    """
    if (cores() if n is None else n) > FEW_CORES:
        return {}
    return {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}
