"""Converts a face data set to keras-kd's TFRecords (see `keras_kd.data.example`).

    python -m keras_kd.data.convert --layout=synthetic --out=data/synthetic
    python -m keras_kd.data.convert --layout=celeba --src=/data/celeba --out=data/celeba --split_by=identity
    python -m keras_kd.data.convert --layout=lfw --src=/data/lfw --pairs=/data/pairs.txt --out=data/lfw --all_test
    python -m keras_kd.data.convert --layout=mtfl --src=/data/mtfl/training.txt --out=data/mtfl
    python -m keras_kd.data.convert --layout=mtfl --src=/data/mtfl/training.txt --out=data/mtfl --face_crop
    python -m keras_kd.data.convert --layout=mtfl --src=/data/mtfl/training.txt --out=data/mtfl_det \
        --face_crop --face_crop_box=detector          # crops around a face detector's box, not the landmarks
    python -m keras_kd.data.convert --layout=celeba --src=/data/celeba --out=data/celeba_aligned --split_by=identity \
        --face_align --face_crop_size=144              # faces aligned on 5 points, as face recognisers see them

Bad input (a missing path, a malformed list line) ends with one line naming the file and exit code 2.
"""
from __future__ import annotations

import os

from absl import app

from flags.convert import FLAGS
from keras_kd.data import face_align, face_detect, layouts
from keras_kd.data.example import DataError, die, write_dataset
from keras_kd.data.synthetic import write_synthetic


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    write_kwargs = dict(split_by=FLAGS.split_by, test_fraction=FLAGS.test_fraction, all_test=FLAGS.all_test,
                        seed=FLAGS.seed, records_per_shard=FLAGS.records_per_shard)
    try:
        if FLAGS.layout == "synthetic":
            write_synthetic(FLAGS.out, FLAGS.num_identities, FLAGS.images_per_identity, FLAGS.image_size,
                            **write_kwargs)
            return
        if FLAGS.layout == "folders":
            items, pairs = layouts.folder_per_identity(FLAGS.src)
        elif FLAGS.layout == "lfw":
            items, pairs = layouts.lfw_pairs(FLAGS.pairs, FLAGS.src)
        elif FLAGS.layout == "celeba":
            items, pairs = layouts.celeba(FLAGS.src)
        else:
            items, pairs = layouts.mtfl(FLAGS.src)
        # The name is what saved stages are checked against: a subset or a crop is other data.
        name = f"{FLAGS.layout}-{os.path.basename(os.path.normpath(FLAGS.src))}"
        if FLAGS.skip_images or (FLAGS.max_images and FLAGS.max_images < len(items)):
            n = FLAGS.max_images or len(items)
            skip = f"after{FLAGS.skip_images}" if FLAGS.skip_images else ""
            name += f"-{min(n, len(items) - FLAGS.skip_images)}{skip}of{len(items)}-seed{FLAGS.seed}"
            total, items = len(items), layouts.subset(items, n, FLAGS.seed, FLAGS.skip_images)
            if not items:
                raise DataError(f"{FLAGS.src}: --skip_images={FLAGS.skip_images} leaves none of its {total} images")
        extra = {}
        if FLAGS.face_crop and FLAGS.face_crop_box == "detector":
            items, report = layouts.detector_crops(items, FLAGS.face_crop_margin, FLAGS.face_crop_size,
                                                   FLAGS.detector_fallback)
            print(f"[convert] {report.summary()}")
            if not report.found:  # (so --detector_fallback=drop always leaves an image)
                raise DataError(f"{FLAGS.src}: the face detector found no face in any of its {report.images} "
                                "images; use --face_crop_box=landmarks")
            name += f"-crop{FLAGS.face_crop_margin:g}x{FLAGS.face_crop_size}-det{FLAGS.detector_fallback}"
            extra["face_crop"] = {**report.meta(), "margin": FLAGS.face_crop_margin, "size": FLAGS.face_crop_size}
        elif FLAGS.face_crop:
            items = layouts.face_crops(items, FLAGS.face_crop_margin, FLAGS.face_crop_size)
            name += f"-crop{FLAGS.face_crop_margin:g}x{FLAGS.face_crop_size}"
            extra["face_crop"] = {"box": "landmarks", "margin": FLAGS.face_crop_margin, "size": FLAGS.face_crop_size}
        elif FLAGS.face_align:
            items = layouts.aligned_faces(items, FLAGS.face_crop_size)
            name += f"-aligned{FLAGS.face_crop_size}"
            extra["face_align"] = {"landmarks": "dlib shape_predictor_5 on the middle two thirds",
                                   "padding": face_align.PADDING, "size": FLAGS.face_crop_size}
        write_dataset(FLAGS.out, items, name, pairs=pairs, extra_meta=extra, **write_kwargs)
    except (DataError, face_detect.DetectorUnavailable, face_align.DlibMissing) as e:
        die(str(e))


if __name__ == "__main__":
    app.run(main)
