"""What the teacher cache's approximation is: the teacher's outputs on the centre crop ÷ on the student's view.

    python main.py --task=align                                  # a run with trained teachers (any model_dir)
    python -m bench.teacher_views --model_dir=runs [--images=256] [--views=4]

``--teacher_cache`` runs the teacher once per training image, on the evaluation's centre crop, while the
student trains on random crops and flips of the same image. For each trained teacher of the run (classify,
align) and each output the cache holds (logits, K), over training images: the distance between the output on
a training view (the pipeline's random crop of the resized image, flipped half the time) and on the centre
crop, relative to the view's output (mean over images and views). Beside it, the same distance to the centre-crop
output of another person's image: the scale of a target that is simply wrong. Forward passes only, no timing.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Tuple

import numpy as np

from bench import common
from export.run_config import config_from_run
from keras_kd.data import pipeline
from keras_kd.data.example import NUM_LANDMARKS
from keras_kd.distill import teacher_cache
from keras_kd.keras import tf
from keras_kd.stages import Runner
from keras_kd.tasks import TASKS


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of ‖a − b‖ / ‖b‖."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)))


def _another_identity(labels: np.ndarray) -> np.ndarray:
    """For each image, the index of the next image (cyclically) of another identity."""
    n = len(labels)
    return np.array([next((j % n for j in range(i + 1, i + n) if labels[j % n] != labels[i]), (i + 1) % n)
                     for i in range(n)])


def views(resized: np.ndarray, in_cfg: pipeline.InputConfig, count: int, seed: int = 0) -> Tuple[np.ndarray, List]:
    """The centre crop of each resized uint8 image and ``count`` training views, cut by the pipeline's own
    crop and flip (``pipeline._crop_flip``), as the teacher cache and the student get them."""
    tf.random.set_seed(seed)

    def cut(image: np.ndarray, training: bool) -> np.ndarray:
        ex = {"image": tf.constant(image), "landmarks": tf.zeros([NUM_LANDMARKS, 2]), "label": tf.constant(0),
              "has_landmarks": tf.constant(False), "source": tf.constant("")}
        return pipeline._crop_flip(ex, in_cfg, training)[0].numpy()

    centre = np.stack([cut(image, False) for image in resized])
    return centre, [np.stack([cut(image, True) for image in resized]) for _ in range(count)]


def main(argv=None) -> List[dict]:
    p = common.parser(__doc__)
    p.add_argument("--model_dir", default="runs")
    p.add_argument("--images", type=int, default=256, help="training images per teacher")
    p.add_argument("--views", type=int, default=4, help="random training views per image")
    args = p.parse_args(argv)
    common.header("teacher_views")
    rows = []
    tasks = [t for t in ("classify", "align")
             if os.path.exists(os.path.join(args.model_dir, t, "stages", "teacher.weights.h5"))]
    if not tasks:
        raise SystemExit(f"{args.model_dir}: no trained teacher (classify/ or align/stages/teacher.weights.h5); "
                         "run python main.py --task=align first")
    for task in tasks:
        cfg = config_from_run(args.model_dir, task)
        runner = Runner(cfg, log=lambda _: None)
        teacher = runner.load(task, "teacher")
        in_cfg = TASKS[task].batch_config(cfg, training=True)
        # The whole resized image (no crop): every training view and the centre crop are cut from it.
        whole = dataclasses.replace(in_cfg, image_size=in_cfg.resize_size, batch_size=args.images, augment=False,
                                    flip=False, pk=None, cache="off", val_fraction=0.0)
        images, targets = next(iter(pipeline.make_dataset(runner.data_dir(task), "train", whole, training=False)))
        resized = np.round(images.numpy() * 255.0).astype(np.uint8)  # the pipeline's decoded, resized pixels
        other = _another_identity(targets["label"].numpy())
        centre, train_views = views(resized, in_cfg, args.views)

        def outputs(x) -> Dict[str, np.ndarray]:
            out = teacher(x, training=False)
            return {k: out[k].numpy() for k in teacher_cache.KEYS}

        at_centre = outputs(centre)
        seen = [outputs(v) for v in train_views]
        cacheable = TASKS[task].cacheable_outputs(cfg)
        for k in teacher_cache.KEYS:
            rows.append({
                "task": task, "output": k, "shape": "x".join(map(str, at_centre[k].shape[1:])),
                "centre_vs_view": float(np.mean([_relative(at_centre[k], s[k]) for s in seen])),
                "other_image": float(np.mean([_relative(at_centre[k][other], s[k]) for s in seen])),
                "cached": k in cacheable, "landmark_head": cfg.landmark_head if task == "align" else ""})
    cols = ["task", "output", "shape", "centre_vs_view", "other_image", "cached", "landmark_head"]
    print(common.table(cols, [[r[c] for c in cols] for r in rows]))
    print("RATIO teacher_views: centre crop vs the student's view ÷ another image: " + ", ".join(
        f"{r['task']} {r['output']} {r['centre_vs_view'] / r['other_image']:.2f}" for r in rows), flush=True)
    common.write_json(args.json, "teacher_views", {"rows": rows})
    common.footer()
    return rows


if __name__ == "__main__":
    main()
