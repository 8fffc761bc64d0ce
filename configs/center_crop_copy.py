"""A probe's data, not the product's path: a converted data set with only the middle of each image kept.

    python configs/center_crop_copy.py --data=DATA --out=DIR --zoom=0.7 [--teacher_outputs=FILE --out_outputs=FILE]

Same records, splits, labels and pairs.txt; each image is replaced by its middle `zoom` fraction (PNG), so at
the same input size the face fills more of the student's pixels. The CelebA subset's crops are 1.5× a face
detector's box, so 0.7 keeps about the box. With --teacher_outputs, the teacher's outputs (computed on the
full crops, where dlib finds its landmarks) are written again for the new data set: same sources, same
values, stamped with the new meta.json's hash, so that `load` accepts them. Images without landmarks only
(landmarks would have to move with the crop).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_kd import io  # noqa: E402
from keras_kd.data.example import META_FILE, PAIRS_FILE, DataError, read_meta  # noqa: E402
from keras_kd.keras import tf  # noqa: E402
from keras_kd.teachers import outputs  # noqa: E402


def middle(im, zoom: float):
    """The middle `zoom` fraction of an image [H, W, C] (numpy array or tensor); the probe's --zoom too."""
    h, w = int(im.shape[0]), int(im.shape[1])
    ch, cw = int(round(h * zoom)), int(round(w * zoom))
    return im[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]


def crop_example(raw: bytes, zoom: float) -> bytes:
    ex = tf.train.Example.FromString(raw)
    f = ex.features.feature
    if f["image/has_landmarks"].int64_list.value and f["image/has_landmarks"].int64_list.value[0]:
        raise DataError("center_crop_copy: records with landmarks are not supported (they would have to move)")
    im = tf.io.decode_image(f["image/encoded"].bytes_list.value[0], channels=3, expand_animations=False).numpy()
    crop = middle(im, zoom)
    f["image/encoded"].bytes_list.value[0] = tf.io.encode_png(crop).numpy()
    f["image/height"].int64_list.value[0], f["image/width"].int64_list.value[0] = crop.shape[:2]
    return ex.SerializeToString()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--zoom", type=float, default=0.7)
    p.add_argument("--teacher_outputs", default="")
    p.add_argument("--out_outputs", default="")
    a = p.parse_args(argv)
    if not 0.1 <= a.zoom <= 1.0:
        raise SystemExit(f"--zoom={a.zoom}: expected a fraction in [0.1, 1]")
    os.makedirs(a.out, exist_ok=True)
    for name in sorted(os.listdir(a.data)):
        if name.endswith(".tfrecord"):
            with tf.io.TFRecordWriter(os.path.join(a.out, name)) as w:
                for raw in tf.data.TFRecordDataset(os.path.join(a.data, name)):
                    w.write(crop_example(raw.numpy(), a.zoom))
    meta = read_meta(a.data)
    meta["name"] += f"_zoom{a.zoom}"
    io.write_json(os.path.join(a.out, META_FILE), meta)
    if os.path.exists(os.path.join(a.data, PAIRS_FILE)):
        io.copy_file(os.path.join(a.data, PAIRS_FILE), os.path.join(a.out, PAIRS_FILE))
    if a.teacher_outputs:
        m, sources, splits, outs = outputs.read(a.teacher_outputs)
        if outs.get("hidden") is outs.get("embedding"):
            outs.pop("hidden", None)  # read's alias of the embedding, not a stored output
        outputs.save(a.out_outputs or os.path.join(a.out, "teacher_outputs.npz"), sources, splits, outs, a.out,
                     teacher=f"{m.get('teacher', '')} (computed on the full images of {meta['name']})")
    return meta


if __name__ == "__main__":
    main()
