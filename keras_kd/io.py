"""Files a later run trusts, written whole or not at all, and their checksums.

Every write goes to a hidden temp file beside the target and is renamed over it (``os.replace``), so a
reader never sees half a file, and a kill or a failing writer leaves the previous file as it was. The
temp file's name ends with the target's own name: writers that pick the format by suffix (``.weights.h5``,
``.npz``, ``.png``) write the right one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

import numpy as np


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """A temp path to write ``path``'s new content to; it replaces ``path`` when the block ends without an
    error and is removed otherwise."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
    """Writes ``path`` through ``write(file)``, opened with ``mode`` ("w": UTF-8 text, "wb": bytes)."""
    with replacing(path) as tmp:
        with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def json_default(obj: Any) -> Any:
    """numpy scalars and arrays (what metric functions return) as plain JSON values."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str, obj: Any, indent: int = 1) -> None:
    text = json.dumps(obj, indent=indent, default=json_default) + "\n"
    atomic_write(path, lambda f: f.write(text))


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), mode="wb")


def write_npz(path: str, **arrays) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays), mode="wb")


def copy_file(src: str, dst: str) -> None:
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes; paths with a scheme (gs://...) are read through tf.io.gfile."""
    if "://" in path:
        from keras_kd.keras import tf  # only for remote files: keeps this module free of TensorFlow
        opener = tf.io.gfile.GFile
    else:
        opener = open
    h = hashlib.sha256()
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
