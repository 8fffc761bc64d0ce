"""The TFRecord schema and writer: exact round trip, deterministic splits, bad input handled."""
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from keras_kd.data.example import (DataError, Item, make_example, parse_example, read_meta, read_pairs,
                                   shard_paths, split_items, write_dataset)
from keras_kd.keras import tf


def _encoded(fmt: str, seed: int, size=(12, 10)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def _item(source, label, data, landmarks=None) -> Item:
    return Item(source=source, label=label, load=lambda: data, landmarks=landmarks)


def _read_all(data_dir) -> dict:
    out = {}
    for split in ("train", "test"):
        for rec in tf.data.TFRecordDataset(shard_paths(str(data_dir), split)).map(parse_example):
            out[rec["source"].numpy().decode()] = (split, rec)
    return out


def _quiet(*_):
    pass


def test_round_trip_is_exact(tmp_path):
    lm = np.arange(10, dtype=np.float32).reshape(5, 2) + 0.25
    items = [_item("b/one.png", "bob", _encoded("PNG", 0), lm),
             _item("a/two.jpg", "alice", _encoded("JPEG", 1, (7, 9))),
             _item("a/three.png", "alice", _encoded("PNG", 2), lm * 1.2)]
    meta = write_dataset(str(tmp_path), items, "tiny", test_fraction=0.5, records_per_shard=1, log=_quiet)
    assert meta["class_names"] == ["alice", "bob"] and meta["has_landmarks"] and meta["image_size"] is None
    got = _read_all(tmp_path)
    assert sorted(got) == sorted(it.source for it in items)
    assert sum(meta["splits"].values()) == 3
    for it in items:
        _, rec = got[it.source]
        data = it.load()
        assert rec["image"].numpy() == data
        h, w = Image.open(io.BytesIO(data)).size[::-1]
        assert (rec["height"].numpy(), rec["width"].numpy()) == (h, w)
        assert rec["label"].numpy() == meta["class_names"].index(it.label)
        assert bool(rec["has_landmarks"].numpy()) == (it.landmarks is not None)
        if it.landmarks is not None:
            np.testing.assert_array_equal(rec["landmarks"].numpy(), it.landmarks)
    assert read_meta(str(tmp_path)) == meta


def test_split_is_deterministic_and_about_80_20():
    items = [_item(f"img{i:04d}.jpg", i % 50, b"") for i in range(2000)]
    a, b = split_items(items, 0.2, "image", seed=1), split_items(items, 0.2, "image", seed=1)
    assert [it.source for it in a["test"]] == [it.source for it in b["test"]]
    assert 0.17 < len(a["test"]) / len(items) < 0.23
    grown = split_items(items + [_item("new.jpg", 0, b"")], 0.2, "image", seed=1)
    assert {it.source for it in a["test"]} <= {it.source for it in grown["test"]}
    other = split_items(items, 0.2, "image", seed=2)
    assert {it.source for it in other["test"]} != {it.source for it in a["test"]}


def test_identity_split_keeps_identities_disjoint():
    items = [_item(f"img{i:04d}.jpg", f"id{i % 100}", b"") for i in range(2000)]
    s = split_items(items, 0.2, "identity", seed=0)
    train_ids, test_ids = {it.label for it in s["train"]}, {it.label for it in s["test"]}
    assert not train_ids & test_ids and len(train_ids | test_ids) == 100
    assert 10 <= len(test_ids) <= 30
    with pytest.raises(ValueError, match="identity"):
        split_items(items, 0.2, "person")


def test_undecodable_images_are_counted_and_skipped(tmp_path):
    good = _encoded("JPEG", 3)
    items = [_item("good.jpg", 0, good), _item("garbage.jpg", 0, b"not an image"),
             _item("truncated.jpg", 0, good[: len(good) // 2])]
    lines = []
    meta = write_dataset(str(tmp_path), items, "bad", all_test=True, log=lines.append)
    assert meta["skipped"] == 2 and meta["splits"] == {"train": 0, "test": 1}
    assert list(_read_all(tmp_path)) == ["good.jpg"]
    assert any("skipped garbage.jpg: Unknown image file format" in line for line in lines)
    assert any("truncated.jpg" in line for line in lines)


def test_pairs_kept_among_test_images_and_replaced_on_rewrite(tmp_path):
    items = [_item(f"{i}.png", i % 2, _encoded("PNG", i)) for i in range(4)]
    broken = _item("broken.png", 0, b"\x89PNG broken")
    write_dataset(str(tmp_path), items + [broken], "p", all_test=True, log=_quiet,
                  pairs=[("0.png", "2.png", 1), ("1.png", "9.png", 0), ("1.png", "broken.png", 0)])
    assert read_pairs(str(tmp_path)) == [("0.png", "2.png", 1)]  # 9.png absent, broken.png skipped
    write_dataset(str(tmp_path), items, "p", all_test=True, log=_quiet)
    assert read_pairs(str(tmp_path)) == []


def test_empty_and_bad_landmarks_raise(tmp_path):
    with pytest.raises(DataError, match="no images"):
        write_dataset(str(tmp_path), [], "empty", log=_quiet)
    with pytest.raises(DataError, match="x.png: expected 5 landmarks"):
        make_example(b"", 1, 1, 0, "x.png", np.zeros((4, 2)))


def test_read_meta_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        read_meta(str(missing))
    with pytest.raises(DataError, match=re.escape(os.path.join(str(tmp_path), "meta.json"))):
        read_meta(str(tmp_path))
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json: not valid JSON"):
        read_meta(str(tmp_path))
    (tmp_path / "meta.json").write_text(json.dumps({"splits": {"train": 3}}))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: meta.json lists train records")):
        read_meta(str(tmp_path))
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg 1\na.jpg b.jpg yes\n")
    with pytest.raises(DataError, match=r"pairs.txt:2:"):
        read_pairs(str(tmp_path))
