"""What this machine's CPU offers, for the choices that depend on it: which Conv2D input gradient is faster
(conv_grad.py) and whether the teacher runs in bfloat16 (models/precision.py)."""
from __future__ import annotations

import functools


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
