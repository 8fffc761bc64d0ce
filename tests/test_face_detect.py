"""Face crops around a detector's box (`convert --face_crop_box=detector`) instead of the image's own landmarks.

The crop logic is tested with a stand-in detector (no OpenCV needed); OpenCV's Haar cascade itself on the real
MTFL faces when both are present (skipped otherwise).
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_kd.data import face_detect, layouts
from keras_kd.data.example import read_meta
from keras_kd.keras import tf

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
POINTS = np.array([[40, 30], [70, 32], [55, 45], [44, 60], [66, 61]], np.float32)  # box 30×31, centre (55, 45.5)
needs_cv2 = pytest.mark.skipif(not face_detect.available(), reason="opencv-python-headless<5 not installed "
                               "(requirements-detector.txt)")
needs_mtfl = pytest.mark.skipif(not (SHARED / "mtfl_80x80").is_dir(), reason="shared MTFL data not present")


def _item(tmp_path: Path, name: str, points=POINTS, size=(90, 120)) -> layouts.Item:
    """An image with a bright 3×3 dot at each landmark, on a dark background."""
    pixels = np.zeros((*size, 3), np.uint8)
    for x, y in points.round().astype(int):
        pixels[y - 1:y + 2, x - 1:x + 2] = 255
    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return layouts.Item(source=name, label="a", load=lambda: path.read_bytes(), landmarks=points)


class FakeDetector:
    """The given boxes, one per call in item order (None: no face), as HaarDetector returns them: (x, y, side)
    in image pixels."""
    name = "fake"

    def __init__(self, *boxes):
        self.boxes = list(boxes)

    def __call__(self, encoded):
        assert tf.io.decode_png(encoded).numpy().ndim == 3  # it is given the image
        return self.boxes.pop(0)


def test_a_hit_is_cropped_around_the_detector_box_not_the_landmarks(tmp_path):
    box = (21.0, 6.0, 70.0)  # a detector box: 2.3 × the landmarks' and above them, as the cascade's
    items = [_item(tmp_path, "a.png")]
    crops, report = layouts.detector_crops(items, margin=0.5, size=64, detector=FakeDetector(box))
    x0, y0, side = face_detect.crop_from_box(box, 0.5)
    assert side == pytest.approx(70 / face_detect.BOX_RATIO * 2)
    assert (x0 + side / 2, y0 + side / 2) == pytest.approx((56.0, 41.0 + face_detect.CENTRE_DY * 70))
    (crop,) = crops
    np.testing.assert_allclose(crop.landmarks, (POINTS - [x0, y0]) * 64 / side, rtol=1e-5)
    pixels = tf.io.decode_png(crop.load()).numpy()
    for x, y in crop.landmarks:
        assert pixels[int(round(y)), int(round(x))].mean() > 60, (x, y)  # the dot moved with its landmark
    assert (report.images, report.found, report.missed, report.wrong) == (1, 1, [], [])
    # The same face box with the landmarks elsewhere gives the same crop: it does not read them.
    moved = POINTS + [3.0, -2.0]
    other = [_item(tmp_path, "b.png", moved)]
    (crop_b,), _ = layouts.detector_crops(other, 0.5, 64, detector=FakeDetector(box))
    np.testing.assert_allclose(crop_b.landmarks - crop.landmarks, np.broadcast_to([3.0, -2.0], (5, 2)) * 64 / side,
                               atol=1e-4)


def test_misses_and_wrong_faces_take_the_jittered_landmark_crop_or_are_dropped(tmp_path):
    items = [_item(tmp_path, f"{n}.png") for n in "abc"]
    boxes = [(21.0, 6.0, 70.0), None, (0.0, 0.0, 20.0)]  # b: no face; c: a face elsewhere
    crops, report = layouts.detector_crops(items, 0.5, 64, "jitter", FakeDetector(*boxes))
    assert len(crops) == 3 and report.found == 1 and report.missed == ["b.png"] and report.wrong == ["c.png"]
    assert report.hit_rate == pytest.approx(1 / 3) and report.dropped == []
    exact = layouts.face_crop_box(POINTS, 0.5)
    for it in crops[1:]:
        assert (it.landmarks >= 0).all() and (it.landmarks <= 64).all()
    # Jittered, not the exact landmark crop, and the same every time (seeded by the file name).
    jittered = face_detect.jittered_crop(POINTS, 0.5, "b.png")
    assert jittered != pytest.approx(exact) and jittered == face_detect.jittered_crop(POINTS, 0.5, "b.png")
    assert face_detect.jittered_crop(POINTS, 0.5, "c.png") != pytest.approx(jittered)
    crops, report = layouts.detector_crops(items, 0.5, 64, "drop", FakeDetector(*boxes))
    assert [it.source for it in crops] == ["a.png"] and report.dropped == ["b.png", "c.png"]
    assert report.meta()["dropped"] == 2 and report.meta()["hit_rate"] == pytest.approx(0.3333)


def test_the_jitter_has_the_measured_spread():
    rng = np.random.default_rng(0)
    rel = []
    for i in range(3000):
        points = POINTS * rng.uniform(0.5, 2.0) + rng.uniform(0, 50, 2)
        rel.append(face_detect._relation(face_detect.jittered_crop(points, 0.5, f"{i}.jpg"), points, 0.5))
    log_side, dx, dy = np.array(rel).T
    assert log_side.std() == pytest.approx(face_detect.JITTER_LOG_SIDE, rel=0.08)
    assert dx.std() == pytest.approx(face_detect.JITTER_DX, rel=0.08)
    assert dy.std() == pytest.approx(face_detect.JITTER_DY, rel=0.08)
    assert abs(np.mean(log_side)) < 0.01 and abs(np.mean(dx)) < 0.005 and abs(np.mean(dy)) < 0.005


def test_without_opencv_the_converter_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    with pytest.raises(face_detect.DetectorUnavailable, match="pip install -r requirements-detector.txt"):
        face_detect.HaarDetector()
    fake = tmp_path / "no_cv2"
    fake.mkdir()
    (fake / "cv2.py").write_text("raise ImportError('not installed')\n")
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(faces / "0.jpg")
    (faces / "list.txt").write_text("0.jpg 10 30 20 12 28 15 15 25 30 30\n")
    r = _cli(f"--src={faces / 'list.txt'}", f"--out={tmp_path / 'out'}", "--face_crop", "--face_crop_box=detector",
             env_path=fake)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: --face_crop_box=detector needs OpenCV's Haar cascades")
    assert not (tmp_path / "out").exists()


@needs_cv2
def test_no_face_in_any_image_stops_naming_the_list_and_writes_nothing(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(faces / f"{i}.jpg")
    listing = faces / "list.txt"
    listing.write_text("".join(f"{i}.jpg 10 30 20 12 28 15 15 25 30 30\n" for i in range(3)))
    r = _cli(f"--src={listing}", f"--out={tmp_path / 'out'}", "--face_crop", "--face_crop_box=detector",
             "--detector_fallback=drop")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (f"error: {listing}: the face detector found no face in any of its 3 "
                                                 "images; use --face_crop_box=landmarks")
    assert not (tmp_path / "out").exists()


def test_the_detector_box_goes_with_face_crop(tmp_path):
    r = _cli("--src=x.txt", f"--out={tmp_path / 'out'}", "--face_crop_box=detector")
    assert r.returncode == 1 and "--face_crop_box=detector goes with --face_crop" in r.stderr


def _cli(*args, env_path=None) -> subprocess.CompletedProcess:
    import os
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if env_path:
        env["PYTHONPATH"] = f"{env_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, "-m", "keras_kd.data.convert", "--layout=mtfl", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)


@needs_cv2
@needs_mtfl
def test_haar_cascade_on_real_mtfl_faces_frames_them_as_the_landmark_crop_does():
    items, _ = layouts.mtfl(str(SHARED / "mtfl_80x80" / "new_training.txt"))
    subset = layouts.subset(items, 300)
    boxes, report = face_detect.detector_boxes(subset, 0.5)
    assert report.hit_rate > 0.93                       # 97.3 % over all 7,650 (face_detect.py)
    m = report.measured()
    assert abs(m["median_log_side"]) < 0.05 and abs(m["median_dy"]) < 0.03 and abs(m["median_dx"]) < 0.04
    assert m["std_dy"] > 0.02                           # the box does not know where the landmarks are


@needs_cv2
@needs_mtfl
def test_cli_detector_crops_record_the_hit_rate_and_unhand_the_face_position(tmp_path):
    src = SHARED / "mtfl_80x80" / "new_training.txt"
    out = {box: tmp_path / box for box in ("landmarks", "detector")}
    for box, path in out.items():
        r = _cli(f"--src={src}", f"--out={path}", "--face_crop", f"--face_crop_box={box}", "--max_images=120",
                 "--all_test")
        assert r.returncode == 0, r.stderr
    meta = read_meta(str(out["detector"]))
    assert meta["name"] == "mtfl-new_training.txt-120of7650-seed0-crop0.5x64-detjitter"
    assert meta["face_crop"]["box"] == "detector" and meta["face_crop"]["hit_rate"] > 0.9
    assert meta["face_crop"]["found"] + meta["face_crop"]["missed"] + meta["face_crop"]["wrong_face"] == 120
    assert read_meta(str(out["landmarks"]))["face_crop"]["box"] == "landmarks"
    assert "detector found the face in" in r.stdout

    def centres(path):
        from keras_kd.data.example import parse_example, shard_paths
        lm = np.stack([parse_example(x)["landmarks"].numpy()
                       for x in tf.data.TFRecordDataset(shard_paths(str(path), "test"))])
        return (lm.min(axis=1) + lm.max(axis=1)) / 2          # the landmark box's centre in each crop
    # Around the landmarks, every face sits in the middle of its crop; around the detector's box, it moves.
    assert np.allclose(centres(out["landmarks"]), 32, atol=1e-3)
    spread = centres(out["detector"]).std(axis=0)
    assert (spread > 1.0).all(), spread
