"""configs/byot_probe.py (the embedding-regression probe of docs/results.md) runs end to end and learns:
tiny synthetic data, random teacher embeddings, the extra-data path included."""
import importlib.util
import os

import numpy as np

from keras_kd.data import synthetic
from keras_kd.teachers import outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probe():
    spec = importlib.util.spec_from_file_location("byot_probe", os.path.join(ROOT, "configs", "byot_probe.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_probe_regresses_the_teacher_embedding_and_scores_the_test_split(tmp_path):
    d = str(tmp_path / "data")
    synthetic.write_synthetic(d, 3, 6, 24, seed=0, log=lambda *_: None)
    train, test = outputs.data_records(d, "train"), outputs.data_records(d, "test")
    sources = np.concatenate([train["source"], test["source"]]).astype(str)
    splits = ["train"] * len(train["source"]) + ["test"] * len(test["source"])
    emb = np.random.default_rng(0).normal(size=(len(sources), 8)).astype(np.float32)
    path = str(tmp_path / "t.npz")
    outputs.save(path, sources, splits, {"embedding": emb}, d, teacher="random")
    out = str(tmp_path / "r.json")
    r = _probe().main([f"--data={d}", f"--teacher_outputs={path}", f"--extra_data={d}", f"--extra_outputs={path}",
                       "--image_size=32", "--epochs=12", "--batch_size=4", f"--json={out}"])
    assert os.path.isfile(out)
    assert r["train_images"] == 2 * len(train["source"]) + len(test["source"])
    assert 0.0 <= r["rank1"] <= 1.0 and 0.0 <= r["rank1_flip"] <= 1.0
    assert r["teacher_rank1"] >= 0.0 and np.isfinite(r["loss_last"])
    assert r["loss_last"] < 0.8 * r["loss_first"]  # it fits the teacher's directions on its training images


def test_mixup_faces_blend_two_people_and_convert(tmp_path):
    spec = importlib.util.spec_from_file_location("mixup_faces", os.path.join(ROOT, "configs", "mixup_faces.py"))
    mixup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mixup)
    images = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 100, 200)])
    labels = np.array([0, 0, 1])
    for im, a, b, lam in mixup.blends(images, labels, 20, seed=0):
        assert labels[a] != labels[b] and 0.2 <= lam <= 0.8
        assert np.all(im == np.round(lam * images[a, 0, 0, 0] + (1 - lam) * images[b, 0, 0, 0]))
    d = str(tmp_path / "data")
    synthetic.write_synthetic(d, 3, 6, 24, seed=0, log=lambda *_: None)
    meta = mixup.main([f"--data={d}", f"--out={tmp_path / 'mix'}", "--n=30"])
    assert meta["splits"]["train"] + meta["splits"]["test"] == 30
    assert len(outputs.data_records(str(tmp_path / "mix"), "train")["source"]) == meta["splits"]["train"]


def test_center_crop_copy_keeps_records_and_restamps_the_teacher_outputs(tmp_path):
    import io

    import pytest
    from PIL import Image

    from keras_kd.data.example import DataError, Item, parse_example, shard_paths, write_dataset
    from keras_kd.keras import tf
    path = os.path.join(ROOT, "configs", "center_crop_copy.py")
    spec = importlib.util.spec_from_file_location("center_crop_copy", path)
    crop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crop)
    rng = np.random.default_rng(0)

    def png(i):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()
    d, out = str(tmp_path / "data"), str(tmp_path / "crop")
    write_dataset(d, [Item(f"im{i}.png", i % 3, lambda b=png(i): b) for i in range(12)], "tiny", log=lambda *_: None)
    srcs = {sp: outputs.data_records(d, sp)["source"] for sp in ("train", "test")}
    sources = np.concatenate([srcs["train"], srcs["test"]]).astype(str)
    splits = ["train"] * len(srcs["train"]) + ["test"] * len(srcs["test"])
    emb = rng.normal(size=(len(sources), 4)).astype(np.float32)
    outputs.save(str(tmp_path / "t.npz"), sources, splits, {"embedding": emb}, d, teacher="random")
    crop.main([f"--data={d}", f"--out={out}", "--zoom=0.7", f"--teacher_outputs={tmp_path / 't.npz'}"])
    for sp in ("train", "test"):
        before = list(tf.data.TFRecordDataset(shard_paths(d, sp)).map(parse_example))
        after = list(tf.data.TFRecordDataset(shard_paths(out, sp)).map(parse_example))
        assert [r["source"].numpy() for r in after] == [r["source"].numpy() for r in before]
        for a, b in zip(before, after):
            full, mid = tf.io.decode_image(a["image"]).numpy(), tf.io.decode_image(b["image"]).numpy()
            assert mid.shape == (14, 14, 3) and np.array_equal(mid, full[3:17, 3:17])
    cache = outputs.load(os.path.join(out, "teacher_outputs.npz"), out, "train")   # accepted for the copy
    np.testing.assert_array_equal(cache.outputs["embedding"], emb[:len(srcs["train"])])
    synth = str(tmp_path / "synth")
    synthetic.write_synthetic(synth, 2, 3, 24, seed=0, log=lambda *_: None)
    with pytest.raises(DataError, match="landmarks"):
        crop.main([f"--data={synth}", f"--out={tmp_path / 'no'}"])
