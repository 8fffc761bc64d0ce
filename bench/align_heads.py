"""Landmark heads against steps: NRMSE of a ResNet-50/d alignment network trained from scratch for N steps.

Not a speed benchmark: the measurement behind the quick preset's `spatial` head (docs/recipe.md, section 7).
Each head reads named trunk features, as models/heads.py does; only the trunk layers a head reads are built,
so a head on stage 2 trains a truncated network (the real models keep every stage for the logits).

    python -m bench.align_heads --width=8 --head=s2 --steps=960 --lr=1e-2 --every=480
    heads: s4 | s3 | s2 | s1 (1x1 conv to 32 channels, flattened, fc), fpnfc (stages 2-4 fused at stage 2,
           fc), fpnhm (the same, soft-argmax), hm2 (soft-argmax on stage 2, as `heatmap`), aoff2 | aoff1 (per
           landmark a softmax over the cells of stage 2 | 1 and a per-cell offset)
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from keras_kd import conv_grad, metrics
from keras_kd.data import pipeline
from keras_kd.data.synthetic import folder_name, write_synthetic
from keras_kd.distill.losses import LANDMARK_UNITS
from keras_kd.keras import keras, tf
from keras_kd.models import resnet
from keras_kd.models.heads import SoftArgmax


class AttentionOffset(keras.layers.Layer):
    """Per landmark: a softmax over the map's cells says where, a per-cell offset says where in the cell."""

    def build(self, shape):
        self.att = keras.layers.Conv2D(5, 1, kernel_initializer="zeros")
        self.off = keras.layers.Conv2D(10, 1, kernel_initializer="zeros")

    def call(self, x):
        b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
        p = tf.nn.softmax(tf.reshape(self.att(x), [b, h * w, 5]), axis=1)          # [B, HW, 5]
        off = tf.reshape(self.off(x), [b, h * w, 5, 2]) / float(w)               # cell units → crop units
        xs = (tf.range(w, dtype=tf.float32) + 0.5) / w
        ys = (tf.range(h, dtype=tf.float32) + 0.5) / h
        grid = tf.stack([tf.tile(xs, [h]), tf.repeat(ys, w)], -1)                 # [HW, 2]
        return tf.einsum("bkn,bknc->bnc", p, grid[None, :, None, :] + off)


def build(width: int, head: str, size: int) -> keras.Model:
    images = keras.Input((size, size, 3))
    f = resnet.backbone(images, width)

    def fc(k):
        out = keras.layers.Dense(10, kernel_initializer="zeros")(keras.layers.Flatten()(k))
        out = keras.layers.Rescaling(1.0 / LANDMARK_UNITS, offset=0.5)(out)
        return keras.layers.Reshape((5, 2))(out)

    def reduce(x, c=32):
        x = keras.layers.BatchNormalization()(keras.layers.Conv2D(c, 1)(x))
        return keras.layers.ReLU()(x)

    def up(x, to):
        return keras.layers.UpSampling2D(to // x.shape[1], interpolation="bilinear")(x) if x.shape[1] != to else x

    if head in ("s1", "s2", "s3", "s4"):
        out = fc(reduce(f["stage" + head[1]]))
    elif head in ("fpnfc", "fpnhm"):
        r = f["stage2"].shape[1]
        x = keras.layers.Concatenate()([up(reduce(f["stage4"]), r), up(reduce(f["stage3"]), r),
                                        reduce(f["stage2"])])
        x = reduce(keras.layers.Conv2D(64, 3, padding="same")(x))
        out = fc(x) if head == "fpnfc" else SoftArgmax()(keras.layers.Conv2D(5, 1)(x))
    elif head in ("aoff2", "aoff1"):
        out = AttentionOffset()(reduce(f["stage" + head[-1]], 64))
    elif head == "hm2":
        x = reduce(keras.layers.Conv2D(64, 3, padding="same")(f["stage2"]), 64)
        out = SoftArgmax()(keras.layers.Conv2D(5, 1)(x))
    else:
        raise SystemExit(f"unknown head {head!r}")
    return keras.Model(images, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--head", default="s2")
    p.add_argument("--steps", type=int, default=480)
    p.add_argument("--every", type=int, default=0, help="evaluate every N steps (0: at the end)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW peak; 10%% warm-up, cosine to 0")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--synthetic", default="60,80,56", help="identities,images each,pixels (quick preset's)")
    p.add_argument("--data_root", default="/tmp/keras_kd_align_heads")
    a = p.parse_args()
    ids, imgs, px = (int(v) for v in a.synthetic.split(","))
    data = os.path.join(a.data_root, folder_name(ids, imgs, px))
    if not os.path.exists(os.path.join(data, "meta.json")):
        write_synthetic(data, ids, imgs, px, seed=0, log=lambda *_: None)
    cfg = pipeline.InputConfig(image_size=a.size, batch_size=a.batch)
    train = pipeline.make_dataset(data, "train", cfg, True).map(lambda x, t: (x, t["landmarks"]))
    test = pipeline.make_dataset(data, "test", cfg, False).map(lambda x, t: (x, t["landmarks"]))
    conv_grad.install()
    model = build(a.width, a.head, a.size)
    warm = a.steps // 10
    sched = keras.optimizers.schedules.CosineDecay(0.0, a.steps - warm, warmup_target=a.lr, warmup_steps=warm)
    model.compile(keras.optimizers.AdamW(sched, weight_decay=0.01),
                  lambda y, q: tf.reduce_mean(tf.square(LANDMARK_UNITS * (y - q)), axis=[1, 2]))
    t0, done, rows = time.time(), 0, []
    while done < a.steps:
        n = min(a.every or a.steps, a.steps - done)
        model.fit(train, steps_per_epoch=n, epochs=1, verbose=0)
        done += n
        pred, true = map(np.concatenate, zip(*[(model(x, training=False).numpy(), y.numpy()) for x, y in test]))
        err = metrics.landmark_errors(pred, true, "interocular").mean(1)
        rows.append(dict(steps=done, nrmse=round(metrics.nrmse(pred, true, "interocular"), 2),
                         failure_rate=round(100 * float((err > 0.1).mean()), 1), seconds=round(time.time() - t0)))
    print(json.dumps(dict(width=a.width, head=a.head, lr=a.lr, size=a.size, synthetic=[ids, imgs, px],
                          params=model.count_params(), results=rows)), flush=True)


if __name__ == "__main__":
    main()
