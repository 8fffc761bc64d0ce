"""A probe, not the product's training path: how far a student gets by regressing a teacher's embedding alone.

    python configs/byot_probe.py --data=DATA --teacher_outputs=FILE [--students=8] [--image_size=64] [--epochs=30]
        [--zoom=1.0] [--head=pooled|flat|gdc] [--extra_data=DIR --extra_outputs=FILE] [--seed=0] [--json=OUT]

No labels, no stages: a freshly built student learns to point its embedding where the teacher's (centred on
its train mean, unit length) points, by cosine, for --epochs, and is scored by rank-1 on the test split
(rank-1 with the flipped image's embedding added too) and pair accuracy. It answers the question the
bring-your-own-teacher table leaves open (docs/results.md): is what holds the students back the losses and
stages of main.py, or the student and the data? --extra_data adds unlabeled images (any converted data set,
its labels ignored) with their teacher outputs, both splits; --zoom has the student see the middle fraction
of each stored image; --head replaces the pooled embedding by one over the last feature map.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from configs.center_crop_copy import middle  # noqa: E402
from keras_kd import metrics  # noqa: E402
from keras_kd.data.example import parse_example, shard_paths  # noqa: E402
from keras_kd.data.pipeline import CROP_RATIO  # noqa: E402
from keras_kd.keras import keras, tf  # noqa: E402
from keras_kd.models import archs  # noqa: E402
from keras_kd.tasks.verification import pair_metrics  # noqa: E402
from keras_kd.teachers import outputs as teacher_outputs  # noqa: E402


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def load_split(data_dir: str, split: str, resize: int, zoom: float):
    """uint8 images [N, resize, resize, 3] (the middle `zoom` of each image), labels, sources."""
    images, labels, sources = [], [], []
    for rec in tf.data.TFRecordDataset(shard_paths(data_dir, split)).map(parse_example):
        im = tf.io.decode_image(rec["image"], channels=3, expand_animations=False)
        if zoom < 1:
            im = middle(im, zoom)
        im = tf.image.resize(im, [resize, resize], antialias=True)
        images.append(tf.cast(tf.clip_by_value(tf.round(im), 0, 255), tf.uint8).numpy())
        labels.append(int(rec["label"]))
        sources.append(rec["source"].numpy().decode())
    return np.stack(images), np.array(labels), sources


def teacher_embeddings(path: str, data_dir: str, split: str) -> np.ndarray:
    """The teacher's embedding of each `split` record, in file order (load_split's), checked against the data."""
    return teacher_outputs.load(path, data_dir, split).outputs["embedding"]


def embedding_model(a, width: int) -> keras.Model:
    m = archs.build_model(a.arch, a.students, a.image_size, num_classes=2, heads=("embedding",),
                          embedding_dim=width, width=a.width, name="probe")
    if a.head == "pooled":
        return keras.Model(m.input, m.output["embedding"])
    L = keras.layers
    f = m.get_layer(archs.feature_layers(m)["stage4"]).output
    if a.head == "gdc":  # MobileFaceNet's global depthwise convolution: a learned weight per position
        f = L.DepthwiseConv2D(f.shape[1], padding="valid", use_bias=False)(f)
    x = L.Flatten()(L.BatchNormalization()(f))
    return keras.Model(m.input, L.BatchNormalization()(L.Dense(width, use_bias=False)(x)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--teacher_outputs", required=True)
    p.add_argument("--extra_data", default="")
    p.add_argument("--extra_outputs", default="")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--students", type=int, default=8, help="ResNet width divisor")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of the other architectures")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--zoom", type=float, default=1.0)
    p.add_argument("--head", choices=["pooled", "flat", "gdc"], default="pooled")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--center", type=int, default=1, help="subtract the teacher's train mean (1) or not (0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    tf.keras.utils.set_random_seed(a.seed)
    t0 = time.time()
    resize = int(round(a.image_size / CROP_RATIO))
    x, _, _ = load_split(a.data, "train", resize, a.zoom)
    x_test, y_test, src_test = load_split(a.data, "test", resize, a.zoom)
    t = teacher_embeddings(a.teacher_outputs, a.data, "train")
    mean = t.mean(0) if a.center else 0.0
    targets = unit(t - mean)
    if a.extra_data:
        for split in ("train", "test"):
            xe, _, _ = load_split(a.extra_data, split, resize, a.zoom)
            x = np.concatenate([x, xe])
            targets = np.concatenate([targets, unit(teacher_embeddings(a.extra_outputs, a.extra_data, split) - mean)])
    targets = targets.astype(np.float32)
    model = embedding_model(a, targets.shape[1])
    steps = a.epochs * (len(x) // a.batch_size)
    warm = max(1, steps // 20)
    opt = keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(
        0.0, steps - warm, warmup_target=a.lr, warmup_steps=warm), weight_decay=a.weight_decay)

    def augment(image, target):
        off = tf.random.uniform([2], 0, resize - a.image_size + 1, dtype=tf.int32)
        image = tf.image.random_flip_left_right(
            tf.image.crop_to_bounding_box(image, off[0], off[1], a.image_size, a.image_size))
        return tf.cast(image, tf.float32) / 255.0, target

    ds = (tf.data.Dataset.from_tensor_slices((x, targets)).shuffle(len(x), seed=a.seed)
          .map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(a.batch_size, drop_remainder=True).prefetch(2))

    @tf.function
    def step(images, target):
        with tf.GradientTape() as tape:
            e = tf.math.l2_normalize(model(images, training=True), -1)
            loss = tf.reduce_mean(1.0 - tf.reduce_sum(e * target, -1))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    o = (resize - a.image_size) // 2
    test = x_test[:, o:o + a.image_size, o:o + a.image_size].astype(np.float32) / 255.0
    losses = []
    for epoch in range(a.epochs):
        losses.append(float(np.mean([float(step(i, tt)) for i, tt in ds])))
        print(f"epoch {epoch + 1}/{a.epochs}: cosine loss {losses[-1]:.4f} ({time.time() - t0:.0f} s)", flush=True)
    e = unit(model.predict(test, batch_size=128, verbose=0))
    e_flip = unit(e + unit(model.predict(test[:, :, ::-1], batch_size=128, verbose=0)))
    pairs, _ = pair_metrics(e, {"source": src_test, "label": y_test}, a.data, a.seed)
    result = {"rank1": metrics.rank1(e, y_test), "rank1_flip": metrics.rank1(e_flip, y_test),
              "teacher_rank1": metrics.rank1(
                  unit(teacher_embeddings(a.teacher_outputs, a.data, "test") - mean), y_test),
              **{k: pairs[k] for k in ("pair_acc", "tar_at_far_1e-3") if k in pairs},
              "loss_first": losses[0], "loss_last": losses[-1], "train_images": int(len(x)),
              "seconds": round(time.time() - t0, 1), "args": vars(a)}
    print(json.dumps({k: v for k, v in result.items() if k != "args"}))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
