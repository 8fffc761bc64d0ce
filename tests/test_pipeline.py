"""The tf.data pipeline on a tiny synthetic set: batches, exact eval geometry, flips, P×K batches."""
import collections
import os
import re

import numpy as np
import pytest

from keras_kd.data import pipeline, synthetic
from keras_kd.data.example import DataError, parse_example, shard_paths
from keras_kd.keras import tf

SOURCE = 40     # stored image size of the synthetic set
SIZE = 32       # network input
# resize = round(32 / (224/256)) = round(36.57) = 37; centre-crop offset = (37 − 32) // 2 = 2
RESIZE, OFFSET = 37, 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    meta = synthetic.write_synthetic(str(d), 4, 6, SOURCE, seed=0, log=lambda *_: None)
    assert meta["splits"]["train"] > 0 and meta["splits"]["test"] > 0
    return str(d)


def _cfg(batch=4, **kw):
    return pipeline.InputConfig(image_size=SIZE, batch_size=batch, **kw)


def _records(data_dir, split):
    out = {}
    for rec in tf.data.TFRecordDataset(shard_paths(data_dir, split)).map(parse_example):
        out[rec["source"].numpy().decode()] = {k: v.numpy() for k, v in rec.items()}
    return out


def test_resize_size_keeps_the_paper_ratio():
    assert _cfg().resize_size == RESIZE
    assert pipeline.InputConfig(image_size=224, batch_size=1).resize_size == 256


def test_training_batches(data_dir):
    ds = pipeline.make_dataset(data_dir, "train", _cfg(4), training=True)
    n_points, n_inside = 0, 0
    for images, t in ds.take(6):  # repeats: more batches than one epoch of 18 images
        assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == tf.float32
        x = images.numpy()
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0.01
        assert set(t) == {"label", "landmarks", "has_landmarks"}  # no "source" in training
        assert t["label"].dtype == tf.int32 and t["label"].shape == (4,)
        assert set(t["label"].numpy().tolist()) <= {0, 1, 2, 3}
        assert t["landmarks"].dtype == tf.float32 and t["landmarks"].shape == (4, 5, 2)
        assert t["has_landmarks"].dtype == tf.bool and t["has_landmarks"].numpy().all()
        lm = t["landmarks"].numpy()
        assert np.abs(lm - 0.5).max() < 1.0  # random crops move points a little, never by a crop width
        n_points += lm.size
        n_inside += ((lm >= 0) & (lm <= 1)).sum()
    assert n_inside / n_points > 0.95


def test_eval_batches_and_determinism(data_dir):
    ds = pipeline.make_dataset(data_dir, "test", _cfg(4), training=False)
    first = [(x.numpy(), {k: v.numpy() for k, v in t.items()}) for x, t in ds]
    second = [(x.numpy(), {k: v.numpy() for k, v in t.items()}) for x, t in ds]
    n_test = len(_records(data_dir, "test"))
    assert sum(len(x) for x, _ in first) == n_test  # finite, the last batch kept
    assert [len(x) for x, _ in first][0] == min(4, n_test)
    for (xa, ta), (xb, tb) in zip(first, second):
        np.testing.assert_array_equal(xa, xb)
        assert set(ta) == {"label", "landmarks", "has_landmarks", "source"}
        for k in ta:
            np.testing.assert_array_equal(ta[k], tb[k])
        assert xa.dtype == np.float32 and 0.0 <= xa.min() and xa.max() <= 1.0


def test_eval_geometry_matches_hand_computation(data_dir):
    """Eval = resize the whole 40×40 image to 37×37, centre-crop 32×32 at offset 2, divide by 32."""
    records = _records(data_dir, "test")
    ds = pipeline.make_dataset(data_dir, "test", _cfg(8), training=False)
    seen = 0
    for images, t in ds:
        for i, src in enumerate(t["source"].numpy()):
            rec = records[src.decode()]
            assert (rec["height"], rec["width"]) == (SOURCE, SOURCE)
            # landmarks: x' = (x · 37/40 − 2) / 32, the same for y (square image)
            expected = (rec["landmarks"].astype(np.float64) * (RESIZE / SOURCE) - OFFSET) / SIZE
            np.testing.assert_allclose(t["landmarks"].numpy()[i], expected, atol=1e-5)
            assert t["label"].numpy()[i] == rec["label"]
            # pixels: decode, antialiased resize, round to uint8, crop rows/cols 2..33, / 255
            img = tf.io.decode_image(rec["image"], channels=3)
            img = tf.image.resize(img, [RESIZE, RESIZE], antialias=True)
            img = np.clip(np.round(img.numpy()), 0, 255).astype(np.uint8)
            crop = img[OFFSET:OFFSET + SIZE, OFFSET:OFFSET + SIZE].astype(np.float32) / 255.0
            np.testing.assert_allclose(images.numpy()[i], crop, atol=1e-6)
            seen += 1
    assert seen == len(records)


# Width 10; points left eye, right eye, nose, left mouth, right mouth.
POINTS = [[2, 3], [7, 3], [5, 5], [3, 8], [6, 8]]
# Mirrored x = 10 − x: (8, 3), (3, 3), (5, 5), (7, 8), (4, 8); then left/right swap (1, 0, 2, 4, 3):
FLIPPED = [[3, 3], [8, 3], [5, 5], [4, 8], [7, 8]]


def test_flip_landmarks_hand_case():
    got = pipeline.flip_landmarks(tf.constant(POINTS, tf.float32), 10)
    np.testing.assert_array_equal(got.numpy(), np.array(FLIPPED, np.float32))


def test_flip_landmarks_twice_is_identity_and_batches():
    pts = tf.constant(np.random.default_rng(0).uniform(0, 32, (3, 5, 2)), tf.float32)  # [batch, 5, 2]
    once = pipeline.flip_landmarks(pts, 32)
    assert once.shape == (3, 5, 2)
    np.testing.assert_allclose(once.numpy()[1], pipeline.flip_landmarks(pts[1], 32).numpy())
    np.testing.assert_allclose(pipeline.flip_landmarks(once, 32).numpy(), pts.numpy(), atol=1e-5)


def test_flip_landmarks_follows_the_image_flip():
    """Pixel i spans [i, i + 1): a mark on pixel column c (x = c + 0.5) lands on column W − 1 − c."""
    w = 10
    image = np.zeros((w, w, 1), np.float32)
    pts = np.array(POINTS, np.float32) + 0.5  # centres of the pixels at (col, row) = POINTS
    for k, (c, r) in enumerate(POINTS):
        image[r, c, 0] = k + 1
    flipped = tf.image.flip_left_right(image).numpy()
    new = pipeline.flip_landmarks(tf.constant(pts), w).numpy()
    for k, (x, y) in enumerate(new):
        original = pipeline.FLIP_PERMUTATION[k]  # the point that moved into slot k
        assert flipped[int(y), int(x), 0] == original + 1


def test_synthetic_landmarks_use_the_pipelines_pixel_convention():
    """A frontal, unshifted synthetic face is drawn mirror-symmetric in its image, so flipping its
    landmarks must give back the same landmarks (left eye ↔ right eye, nose on the axis).

    synthetic.py puts pixel [row, col]'s centre at x = col (its docstring), so its symmetry axis is at
    x = (W − 1)/2; the pipeline maps x → W − x (pixel i spans [i, i + 1), axis at W/2). Under those two
    conventions the flipped landmarks land 1 px to the right of the mirrored features.
    """
    params = synthetic.identity_params(1, seed=0)[0]
    s = synthetic._scene(params, np.random.default_rng(0))
    s.update(angle=0.0, yaw=0.0, shift_u=0.0, shift=np.zeros(2, np.float32))
    lm = synthetic._landmarks(s, SOURCE)
    # The geometry is symmetric: eyes and mouth corners mirror each other about the nose's x.
    np.testing.assert_allclose(lm[0, 0] + lm[1, 0], 2 * lm[2, 0], atol=1e-4)
    np.testing.assert_allclose(lm[3, 0] + lm[4, 0], 2 * lm[2, 0], atol=1e-4)
    flipped = pipeline.flip_landmarks(tf.constant(lm), SOURCE).numpy()
    np.testing.assert_allclose(flipped, lm, atol=0.05)


def test_pk_batches_hold_k_images_of_each_identity(data_dir):
    ds = pipeline.make_dataset(data_dir, "train", _cfg(6, pk=(2, 3)), training=True)
    counts = [collections.Counter(t["label"].numpy().tolist()) for _, t in ds.take(60)]
    assert all(sum(c.values()) == 6 for c in counts)
    # Images come in runs of K = 3 of one identity.
    assert all(n % 3 == 0 for c in counts for n in c.values())
    assert len(set().union(*counts)) == 4  # every identity gets drawn
    # "every batch holds P identities × K images": 2 identities, each exactly 3 times.
    bad = [dict(c) for c in counts if sorted(c.values()) != [3, 3]]
    assert not bad, f"{len(bad)} of {len(counts)} batches are not 2 identities × 3: {bad[:3]}"


def test_missing_shards_raise_a_data_error_naming_the_dir(tmp_path, data_dir):
    empty = tmp_path / "no_shards_here"
    empty.mkdir()
    with pytest.raises(DataError, match=re.escape(str(empty))):
        pipeline.make_dataset(str(empty), "train", _cfg(), training=True)
    with pytest.raises(DataError, match="no valid-\\*.tfrecord"):  # an existing dir, a split it lacks
        pipeline.make_dataset(data_dir, "valid", _cfg(), training=False)


def test_images_of_any_size_are_resized_to_the_model_input(tmp_path):
    """Not an error: every image is resized to image_size·256/224 and centre-cropped, landmarks follow."""
    import io

    from PIL import Image

    from keras_kd.data.example import Item, write_dataset

    def png(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (120, 60, 30)).save(buf, "PNG")
        return buf.getvalue()

    sizes = [(40, 40), (64, 32), (23, 57)]
    items = [Item(f"{w}x{h}.png", "x", lambda w=w, h=h: png(w, h),
                  np.array([[w / 2, h / 2]] * 5, np.float32)) for w, h in sizes]
    write_dataset(str(tmp_path), items, "mixed", all_test=True, log=lambda *_: None)
    images, targets = next(iter(pipeline.make_dataset(str(tmp_path), "test", pipeline.InputConfig(32, 3),
                                                      training=False)))
    assert images.shape == (3, 32, 32, 3)
    cfg = pipeline.InputConfig(32, 3)
    centre = (cfg.resize_size / 2 - (cfg.resize_size - 32) // 2) / 32  # image centre, in the centre crop
    np.testing.assert_allclose(targets["landmarks"].numpy(), centre, atol=1e-5)


# ---- the image cache (--cache) -----------------------------------------------------------------------------
def _cache_ops(ds):
    """The CacheDataset nodes of a dataset's graph, with their file name ('' = memory)."""
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(ds._as_serialized_graph().numpy())
    consts = {n.name: n.attr["value"].tensor.string_val for n in graph.node if n.op == "Const"}
    return [b"".join(consts.get(n.input[1].split(":")[0], [b"?"])).decode() for n in graph.node
            if n.op.startswith("CacheDataset")]


def test_auto_caches_in_memory_only_what_fits_the_budget(data_dir):
    n = 18 * RESIZE * RESIZE * 3  # the train split decoded: 18 images of 37×37×3 bytes
    assert pipeline.choose_cache("auto", data_dir, "train", RESIZE, budget=n)[0] == "memory"
    mode, why = pipeline.choose_cache("auto", data_dir, "train", RESIZE, budget=n - 1)
    assert mode == "off" and "exceeds" in why
    for given in ("memory", "disk", "off"):
        assert pipeline.choose_cache(given, data_dir, "train", RESIZE, budget=1)[0] == given
    assert pipeline.memory_budget() > 0
    with pytest.raises(ValueError, match="cache must be one of auto, memory, disk, off"):
        pipeline.choose_cache("ram", data_dir, "train", RESIZE)


def test_a_split_larger_than_the_budget_is_streamed_not_cached(data_dir):
    logs = []
    big = pipeline.make_dataset(data_dir, "train", _cfg(4, cache="auto", cache_budget=1000), training=True,
                                log=logs.append)
    assert _cache_ops(big) == [] and next(iter(big))[0].shape == (4, SIZE, SIZE, 3)
    assert logs == [f"[data] {data_dir} train: streamed, not cached (--cache=auto: 0.1 MiB decoded exceeds the "
                    "0 MiB budget)"]
    small = pipeline.make_dataset(data_dir, "train", _cfg(4, cache="auto", cache_budget=10**9), training=True,
                                  log=logs.append)
    assert _cache_ops(small) == [""] and "cached in memory" in logs[-1]
    pipeline.make_dataset(data_dir, "train", _cfg(4, cache="auto", cache_budget=10**9), training=True,
                          log=logs.append)
    assert len(logs) == 2  # once per split and choice


def test_disk_cache_is_a_file_under_the_given_folder_and_serves_the_same_images(data_dir, tmp_path):
    cfg = _cfg(4, cache="disk", cache_dir=str(tmp_path / "cache"))
    first = pipeline.make_dataset(data_dir, "test", cfg, training=False, log=lambda _: None)
    (path,) = _cache_ops(first)
    assert path.startswith(str(tmp_path / "cache" / "test-"))
    written = [x.numpy() for x, _ in first]
    assert os.path.exists(path + ".index")  # complete after one pass: later runs read it
    again = [x.numpy() for x, _ in pipeline.make_dataset(data_dir, "test", cfg, training=False, log=lambda _: None)]
    np.testing.assert_array_equal(np.concatenate(written), np.concatenate(again))
    # A lock left by a killed run does not stop the next one.
    open(path + "_0.lockfile", "w").close()
    os.remove(path + ".index")
    assert len(list(pipeline.make_dataset(data_dir, "test", cfg, training=False, log=lambda _: None))) == len(written)


def test_pk_batches_are_shared_among_replicas_by_whole_identities():
    assert pipeline.pk_split_problem(3, 4, 1) is None
    assert pipeline.pk_split_problem(8, 4, 2) is None and pipeline.pk_split_problem(4, 4, 2) is None
    assert pipeline.pk_split_problem(6, 4, 4) == (
        "--ids_per_batch=6 × --images_per_id=4 over 4 replicas: each replica would get 6 images, not whole "
        "identities of 4 (its triplets are mined in its share alone); use an --ids_per_batch that is a "
        "multiple of 4 and at least 8")
    assert "not two identities or more" in pipeline.pk_split_problem(2, 4, 2)  # one identity: no negative
