"""Readers of on-disk layouts, on tiny fixtures and (when present) on the real shared data; the convert CLI."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_kd.data import layouts
from keras_kd.data.example import DataError, parse_example, read_meta, read_pairs, shard_paths, write_dataset
from keras_kd.keras import tf

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _image(path: Path, size=(6, 8), gray=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if gray else pixels).save(path)
    return path


def _quiet(*_):
    pass


def test_folder_per_identity(tmp_path):
    jpg = _image(tmp_path / "alice" / "a.jpg")
    _image(tmp_path / "alice" / "b.PNG")
    _image(tmp_path / "s1" / "1.pgm", (5, 7), gray=True)
    (tmp_path / "s1" / "notes.txt").write_text("not an image")
    _image(tmp_path / ".cache" / "x.jpg")
    (tmp_path / "README.md").write_text("ignored: not in an identity folder")
    items, pairs = layouts.folder_per_identity(str(tmp_path))
    assert pairs == []
    assert [(it.source, it.label) for it in items] == [("alice/a.jpg", "alice"), ("alice/b.PNG", "alice"),
                                                       ("s1/1.pgm", "s1")]
    assert items[0].load() == jpg.read_bytes()  # formats TF decodes are passed through untouched
    pgm = tf.io.decode_image(items[2].load(), channels=3).numpy()  # PGM -> PNG, RGB
    assert pgm.shape == (5, 7, 3)
    np.testing.assert_array_equal(pgm[..., 0], np.asarray(Image.open(tmp_path / "s1" / "1.pgm")))


def test_missing_or_empty_folder_raises(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope'}: directory does not exist")):
        layouts.folder_per_identity(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no images"):
        layouts.folder_per_identity(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        layouts.celeba(str(tmp_path / "nope"))


def test_lfw_pairs_both_line_kinds(tmp_path):
    for name in ("Ann_Lee/Ann_Lee_0001.jpg", "Ann_Lee/Ann_Lee_0002.jpg", "Bo/Bo_0001.jpg"):
        _image(tmp_path / "lfw" / name)
    lfw_txt = tmp_path / "pairs.txt"
    lfw_txt.write_text("1\t2\nAnn_Lee\t1\t2\nAnn_Lee\t2\tBo\t1\n")
    items, pairs = layouts.lfw_pairs(str(lfw_txt), str(tmp_path / "lfw"))
    assert len(items) == 3
    assert pairs == [("Ann_Lee/Ann_Lee_0001.jpg", "Ann_Lee/Ann_Lee_0002.jpg", 1),
                     ("Ann_Lee/Ann_Lee_0002.jpg", "Bo/Bo_0001.jpg", 0)]
    simple = tmp_path / "simple.txt"
    simple.write_text("# img1 img2 same\nBo/Bo_0001.jpg Ann_Lee/Ann_Lee_0001.jpg 0\n")
    assert layouts.lfw_pairs(str(simple), str(tmp_path / "lfw"))[1] == [
        ("Bo/Bo_0001.jpg", "Ann_Lee/Ann_Lee_0001.jpg", 0)]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2\nAnn_Lee 1 2\nAnn_Lee one two three four\n")
    with pytest.raises(DataError, match=re.escape(f"{bad}:3: expected")):
        layouts.lfw_pairs(str(bad), str(tmp_path / "lfw"))
    missing = tmp_path / "missing.txt"
    missing.write_text("Bo 1 3\n")
    with pytest.raises(DataError, match=re.escape(f"{missing}:1: image Bo/Bo_0003.jpg")):
        layouts.lfw_pairs(str(missing), str(tmp_path / "lfw"))


def test_celeba_landmarks_are_interleaved(tmp_path):
    for i in (1, 2, 3):
        _image(tmp_path / "img_align_celeba" / f"00000{i}.jpg", (21, 17))
    (tmp_path / "list_landmarks_align_celeba.txt").write_text(
        "4\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        "000001.jpg 1 11 2 12 3 13 4 14 5 15\n000002.jpg 6 7 8 9 10 11 12 13 14 15\n"
        "000009.jpg 1 1 1 1 1 1 1 1 1 1\n")  # 000009 is not on disk: ignored
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 7\n000002.jpg 7\n000003.jpg 12\n000009.jpg 1\n")
    (tmp_path / "pairs.txt").write_text("# img1 img2 same\n000001.jpg 000002.jpg 1\n000001.jpg 000003.jpg 0\n")
    items, pairs = layouts.celeba(str(tmp_path))
    assert [(it.source, it.label) for it in items] == [("000001.jpg", 7), ("000002.jpg", 7), ("000003.jpg", 12)]
    np.testing.assert_array_equal(items[0].landmarks, [[1, 11], [2, 12], [3, 13], [4, 14], [5, 15]])
    assert items[2].landmarks is None
    assert pairs == [("000001.jpg", "000002.jpg", 1), ("000001.jpg", "000003.jpg", 0)]

    lm_file = tmp_path / "list_landmarks_align_celeba.txt"
    lm_file.write_text("1\nheader\n000001.jpg 1 2 3\n")
    with pytest.raises(DataError, match=re.escape(f"{lm_file}:3:")):
        layouts.celeba(str(tmp_path))
    lm_file.unlink()
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 7\n")
    with pytest.raises(DataError, match="no identity for 2 image"):
        layouts.celeba(str(tmp_path))


def test_celeba_images_in_root_without_annotations(tmp_path):
    _image(tmp_path / "000005.jpg")
    items, pairs = layouts.celeba(str(tmp_path))
    assert [(it.source, it.label, it.landmarks) for it in items] == [("000005.jpg", "unknown", None)]
    assert pairs == []


def test_mtfl_lists_all_x_then_all_y(tmp_path):
    _image(tmp_path / "lfw_5590" / "A_B_0001.jpg")
    _image(tmp_path / "net" / "x.jpg")
    listing = tmp_path / "training.txt"
    listing.write_text("lfw_5590\\A_B_0001.jpg 1 2 3 4 5 11 12 13 14 15 1 2 1 1\n"
                       " net/x.jpg 10.5 20 30 40 50 60 70 80 90 100\n")
    items, pairs = layouts.mtfl(str(listing))
    assert pairs == [] and [it.source for it in items] == ["lfw_5590/A_B_0001.jpg", "net/x.jpg"]
    assert {it.label for it in items} == {"unknown"}
    np.testing.assert_array_equal(items[0].landmarks, [[1, 11], [2, 12], [3, 13], [4, 14], [5, 15]])
    assert items[1].landmarks[0].tolist() == [10.5, 60]

    for text, what in [("net/x.jpg 1 2 3\n", "expected a path and 10 coordinates"),
                       ("net/x.jpg 1 2 3 4 5 6 7 8 nine 10\n", "coordinates must be numbers"),
                       ("net/gone.jpg 1 2 3 4 5 6 7 8 9 10\n", "gone.jpg does not exist")]:
        listing.write_text("lfw_5590/A_B_0001.jpg 1 2 3 4 5 6 7 8 9 10\n" + text)
        with pytest.raises(DataError, match=re.escape(f"{listing}:2: ") + ".*" + re.escape(what)):
            layouts.mtfl(str(listing))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'none.txt'}: file does not exist")):
        layouts.mtfl(str(tmp_path / "none.txt"))


def _convert_and_read_back(items, pairs, out: Path) -> dict:
    meta = write_dataset(str(out), items, "subset", all_test=True, pairs=pairs, log=_quiet)
    records = {}
    for rec in tf.data.TFRecordDataset(shard_paths(str(out), "test")).map(parse_example):
        records[rec["source"].numpy().decode()] = rec
    assert read_meta(str(out)) == meta and len(records) == len(items) == meta["splits"]["test"]
    return records


@pytest.mark.skipif(not (SHARED / "mtfl_80x80").is_dir(), reason="shared MTFL data not present")
def test_real_mtfl(tmp_path):
    items, _ = layouts.mtfl(str(SHARED / "mtfl_80x80" / "new_training.txt"))
    assert len(items) == 7650
    lms = np.stack([it.landmarks for it in items])
    assert (lms >= 0).all() and (lms < 80).all()
    assert (lms[:, 0, 0] < lms[:, 1, 0]).mean() > 0.95  # left eye has the smaller x
    subset = items[::77]
    records = _convert_and_read_back(subset, [], tmp_path)
    for it in subset:
        np.testing.assert_allclose(records[it.source]["landmarks"].numpy(), it.landmarks)
        assert records[it.source]["height"].numpy() == 80


@pytest.mark.skipif(not (SHARED / "celeba_id_subset_144").is_dir(), reason="shared CelebA data not present")
def test_real_celeba_subset(tmp_path):
    items, pairs = layouts.celeba(str(SHARED / "celeba_id_subset_144"))
    assert len(items) == 3409 and len({it.label for it in items}) == 237 and len(pairs) == 3000
    assert sum(p[2] for p in pairs) == 1500 and all(it.landmarks is None for it in items)
    subset = items[:100]
    records = _convert_and_read_back(subset, pairs, tmp_path)
    assert {int(r["height"].numpy()) for r in records.values()} == {144}
    kept = read_pairs(str(tmp_path))
    assert all(a in records and b in records for a, b, _ in kept)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keras_kd.data.convert", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cli_synthetic(tmp_path):
    out = tmp_path / "syn"
    r = _cli("--layout=synthetic", f"--out={out}", "--num_identities=3", "--images_per_identity=4",
             "--image_size=32", "--seed=2")
    assert r.returncode == 0, r.stderr
    assert "synthetic-faces-v2-3x4-32px-seed2: wrote" in r.stdout
    meta = read_meta(str(out))
    assert meta["synthetic"] and sum(meta["splits"].values()) == 12


def test_cli_missing_src_exits_2_naming_it(tmp_path):
    missing = tmp_path / "no_such_dir"
    r = _cli("--layout=folders", f"--src={missing}", f"--out={tmp_path / 'out'}")
    assert r.returncode == 2
    assert str(missing) in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_cli_landmark_outside_the_image_names_the_line_and_keeps_the_old_output(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        _image(tmp_path / "faces" / name, (40, 40))
    listing = tmp_path / "faces" / "training.txt"
    listing.write_text("a.jpg 10 30 20 12 28 15 15 25 30 30\n"
                       "b.jpg 10 30 20 12 48 15 15 25 30 30\n")  # b's 5th x is 48 in a 40-pixel image
    out = tmp_path / "out"
    assert _cli("--layout=synthetic", f"--out={out}", "--num_identities=2", "--images_per_identity=3",
                "--image_size=32").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = _cli("--layout=mtfl", f"--src={listing}", f"--out={out}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (f"error: {listing}:2: b.jpg: landmark 5 at (48, 30) lies outside "
                                                 "the 40×40 image (1 of 5 points outside)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost or half-written


def _dotted_item(tmp_path: Path, points: np.ndarray, size=(90, 120)) -> layouts.Item:
    """An image with a bright 3×3 dot at each landmark, on a dark background."""
    pixels = np.zeros((*size, 3), np.uint8)
    for x, y in points.round().astype(int):
        pixels[y - 1:y + 2, x - 1:x + 2] = 255
    path = tmp_path / "dots.png"
    Image.fromarray(pixels).save(path)
    return layouts.Item(source="dots.png", label="a", load=lambda: path.read_bytes(), landmarks=points)


def test_face_crop_moves_pixels_and_landmarks_together(tmp_path):
    points = np.array([[40, 30], [70, 32], [55, 45], [44, 60], [66, 61]], np.float32)
    x0, y0, side = layouts.face_crop_box(points, margin=0.5)
    assert side == pytest.approx(62.0) and (x0, y0) == pytest.approx((24.0, 14.5))  # box 30×31, centre (55, 45.5)
    (crop,) = layouts.face_crops([_dotted_item(tmp_path, points)], margin=0.5, size=64)
    pixels = tf.io.decode_png(crop.load()).numpy()
    assert pixels.shape == (64, 64, 3)
    for x, y in crop.landmarks:
        assert 0 <= x < 64 and 0 <= y < 64
        assert pixels[int(round(y)), int(round(x))].mean() > 60, (x, y)  # the dot moved with its landmark
    assert pixels[2:6, 2:6].max() < 30  # a corner far from every landmark stays dark


def test_face_crop_past_the_border_repeats_the_edge(tmp_path):
    points = np.array([[4, 4], [20, 4], [12, 12], [6, 20], [18, 20]], np.float32)  # face in the top-left corner
    (crop,) = layouts.face_crops([_dotted_item(tmp_path, points, (40, 40))], margin=0.5, size=32)
    x0, y0, _ = layouts.face_crop_box(points, 0.5)
    assert x0 < 0 and y0 < 0
    assert tf.io.decode_png(crop.load()).numpy().shape == (32, 32, 3)
    assert (crop.landmarks > 0).all() and (crop.landmarks < 32).all()


def test_face_crop_needs_landmarks(tmp_path):
    item = layouts.Item(source="x.png", label="a", load=lambda: b"", origin="list.txt:3")
    with pytest.raises(DataError, match="list.txt:3: no landmarks"):
        layouts.face_crops([item])


def test_subset_is_deterministic_and_skip_gives_the_rest():
    items = [layouts.Item(source=f"{i}.jpg", label="a", load=bytes) for i in range(50)]
    a = layouts.subset(items, 20, seed=1)
    assert [it.source for it in a] == [it.source for it in layouts.subset(items, 20, seed=1)]
    assert [it.source for it in a] != [it.source for it in layouts.subset(items, 20, seed=2)]
    rest = layouts.subset(items, 100, seed=1, skip=20)
    assert len(rest) == 30 and not {it.source for it in a} & {it.source for it in rest}


@pytest.mark.skipif(not (SHARED / "mtfl_80x80").is_dir(), reason="shared MTFL data not present")
def test_real_mtfl_face_crops_hold_their_landmarks(tmp_path):
    items, _ = layouts.mtfl(str(SHARED / "mtfl_80x80" / "new_training.txt"))
    subset = layouts.subset(items, 40)
    crops = layouts.face_crops(subset, margin=0.5, size=64)
    for before, it in zip(subset, crops):
        # Margin 0.5: the landmarks' box fills the middle half of the crop, so every point is in [16, 48].
        assert (it.landmarks >= 16 - 1e-3).all() and (it.landmarks <= 48 + 1e-3).all()
        assert it.landmarks[0, 0] < it.landmarks[1, 0]  # the left eye stays left
        assert np.allclose(np.diff(before.landmarks, axis=0) * (64 / layouts.face_crop_box(before.landmarks)[2]),
                           np.diff(it.landmarks, axis=0), atol=1e-3)  # shape kept, only scaled
    records = _convert_and_read_back(crops, [], tmp_path)
    assert {int(r["height"].numpy()) for r in records.values()} == {64}


def test_cli_face_crop_subset_names_what_it_is(tmp_path):
    faces = tmp_path / "faces"
    for i in range(6):
        _image(faces / f"{i}.jpg", (40, 40))
    (faces / "training.txt").write_text("".join(f"{i}.jpg 10 30 20 12 28 15 15 25 30 30\n" for i in range(6)))
    out = tmp_path / "out"
    r = _cli("--layout=mtfl", f"--src={faces / 'training.txt'}", f"--out={out}", "--face_crop", "--max_images=4",
             "--face_crop_size=32")
    assert r.returncode == 0, r.stderr
    meta = read_meta(str(out))
    assert meta["name"] == "mtfl-training.txt-4of6-seed0-crop0.5x32" and meta["image_size"] == [32, 32]
    assert sum(meta["splits"].values()) == 4
    r = _cli("--layout=mtfl", f"--src={faces / 'training.txt'}", f"--out={tmp_path / 'rest'}", "--skip_images=4",
             "--all_test")
    assert r.returncode == 0, r.stderr
    assert read_meta(str(tmp_path / "rest"))["splits"] == {"train": 0, "test": 2}
