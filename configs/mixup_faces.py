"""A probe's data, not the product's path: new unlabeled faces made by blending two train faces of different people.

    python configs/mixup_faces.py --data=DATA --out=DIR [--n=6000] [--seed=0]
    python -m keras_kd.teachers.dlib DIR --out=DIR.npz       # the teacher's outputs for them
    python configs/byot_probe.py --data=DATA --teacher_outputs=... --extra_data=DIR --extra_outputs=DIR.npz

Each image is λ·a + (1 − λ)·b, pixel by pixel, of two train images of different people (λ uniform in
[0.2, 0.8]), written as a converted data set (its labels are meaningless). With the teacher run on the blend
itself, a student sees the teacher's function between the faces it has: the "function matching" of Beyer et
al. (arXiv 2106.05237), done offline. docs/results.md measures what it gives the embedding probe.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from keras_kd.data.example import Item, parse_example, shard_paths, write_dataset  # noqa: E402
from keras_kd.keras import tf  # noqa: E402


def blends(images: np.ndarray, labels: np.ndarray, n: int, seed: int):
    """Yields (image, a, b, λ) for n blends of two images of different labels."""
    if len(np.unique(labels)) < 2:
        raise ValueError("mixup faces need at least two people in the train split")
    rng = np.random.default_rng(seed)
    for _ in range(n):
        a, b = rng.integers(len(images), size=2)
        while labels[a] == labels[b]:
            a, b = rng.integers(len(images), size=2)
        lam = rng.uniform(0.2, 0.8)
        yield np.clip(np.round(lam * images[a] + (1 - lam) * images[b]), 0, 255).astype(np.uint8), a, b, lam


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    images, labels = [], []
    for rec in tf.data.TFRecordDataset(shard_paths(a.data, "train")).map(parse_example):
        images.append(tf.io.decode_image(rec["image"], channels=3, expand_animations=False).numpy())
        labels.append(int(rec["label"]))
    items = []
    for k, (im, *_) in enumerate(blends(np.stack(images), np.array(labels), a.n, a.seed)):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        items.append(Item(source=f"mix{k:05d}", label=k % 50, load=lambda d=buf.getvalue(): d))
    return write_dataset(a.out, items, os.path.basename(os.path.normpath(a.data)) + "_mixup", test_fraction=0.02,
                         extra_meta={"mixup": f"U(0.2, 0.8) of two people's train images, seed {a.seed}"})


if __name__ == "__main__":
    main()
