"""Faces aligned on 5 points (keras_kd/data/face_align.py, `convert --face_align`): on real faces the eyes
land on the same pixels in every chip; the converter writes chips, names the data and refuses what it
cannot align. Most need dlib (pip install -r requirements-teachers.txt) and skip without it."""
import io
import json
import os
import subprocess
import sys

import importlib.util

import numpy as np
import pytest

from conftest import REPO, SHARED_DATA  # noqa: E402
from keras_kd.data import face_align, layouts, synthetic  # noqa: E402
from keras_kd.data.example import DataError, Item, parse_example, read_meta, shard_paths  # noqa: E402
from keras_kd.keras import tf  # noqa: E402

CELEBA = SHARED_DATA / "celeba_id_subset_144"
needs_dlib = pytest.mark.skipif(not (importlib.util.find_spec("dlib") and importlib.util.find_spec(
    "face_recognition_models")), reason="the optional teachers are not installed")


def _cli(*args, env_path=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if env_path:
        env["PYTHONPATH"] = f"{env_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, "-m", "keras_kd.data.convert", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _eye_line(aligner, image):
    """(angle in degrees, length as a fraction of the side) of the line between the eye centres that dlib's
    5-point predictor finds on an image (points 0-1 and 2-3 are the corners of each eye)."""
    shape = aligner.predictor(np.ascontiguousarray(image), aligner.dlib.rectangle(*face_align.middle_box(
        *image.shape[:2])))
    pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(4)], np.float32) / image.shape[0]
    v = pts[2:4].mean(axis=0) - pts[0:2].mean(axis=0)
    return np.degrees(np.arctan(v[1] / v[0])), np.linalg.norm(v)


@needs_dlib
@pytest.mark.skipif(not CELEBA.exists(), reason=f"{CELEBA} not present")
def test_on_real_faces_the_eyes_land_on_the_same_pixels_of_every_chip():
    from PIL import Image

    items = layouts.subset(layouts.celeba(str(CELEBA))[0], 40)
    aligner = face_align.Aligner(112)
    crops = [np.asarray(Image.open(io.BytesIO(it.load())).convert("RGB")) for it in items]  # as the loader reads
    chips = [aligner(c) for c in crops]
    assert all(c.shape == (112, 112, 3) and c.dtype == np.uint8 for c in chips)
    before, after = (np.array([_eye_line(aligner, im) for im in ims]) for ims in (crops, chips))
    # The Haar crops of ../shared tilt by 7° and scale by 8 % (std) on these 40 faces; the chips by 2° and 4 %
    # (what remains is the predictor's own error, which it makes on the chips too).
    assert after[:, 0].std() < 0.5 * before[:, 0].std() and after[:, 0].std() < 3.5, (before, after)
    cv = [a[:, 1].std() / a[:, 1].mean() for a in (before, after)]
    assert cv[1] < 0.7 * cv[0], cv
    # The lazy loader gives the same chip as a PNG.
    [item] = layouts.aligned_faces(items[:1], 112, aligner)
    png = tf.io.decode_png(item.load()).numpy()
    np.testing.assert_array_equal(png, chips[0])


def _people(tmp_path):
    """A folder per identity: 2 synthetic people × 3 faces, 96 px PNGs."""
    src = tmp_path / "people"
    for k, item in enumerate(synthetic.synthetic_items(2, 3, 96, seed=0)):
        d = src / f"person{k // 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{k}.png").write_bytes(item.load())
    return src


@needs_dlib
def test_the_converter_stores_chips_and_names_the_data(tmp_path):
    src = _people(tmp_path)
    out = tmp_path / "aligned"
    r = _cli("--layout=folders", f"--src={src}", f"--out={out}", "--face_align", "--face_crop_size=80",
             "--all_test")
    assert r.returncode == 0, r.stderr[-2000:]
    meta = read_meta(str(out))
    assert meta["name"] == "folders-people-aligned80"
    assert meta["face_align"] == {"landmarks": "dlib shape_predictor_5 on the middle two thirds",
                                  "padding": face_align.PADDING, "size": 80}
    shapes = [tuple(tf.io.decode_image(parse_example(x)["image"]).shape)
              for x in tf.data.TFRecordDataset(shard_paths(str(out), "test"))]
    assert shapes == [(80, 80, 3)] * 6


def test_face_crop_and_face_align_are_one_or_the_other(tmp_path):
    r = _cli("--layout=celeba", "--src=x", f"--out={tmp_path / 'o'}", "--face_crop", "--face_align")
    assert r.returncode == 1 and "--face_crop and --face_align are two ways to cut the face" in r.stderr
    assert not (tmp_path / "o").exists()


def test_images_with_landmarks_are_refused_by_name():
    item = Item("a.jpg", 0, lambda: b"", landmarks=np.zeros((5, 2), np.float32), origin="list.txt:3")
    with pytest.raises(DataError, match=r"^list.txt:3: has landmarks, which --face_align does not move"):
        layouts.aligned_faces([item], 64, aligner=object())


def test_without_dlib_the_converter_says_what_to_install_in_one_line(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "dlib.py").write_text("raise ImportError('no dlib here')\n")
    out = tmp_path / "o"
    r = _cli("--layout=folders", f"--src={_people(tmp_path)}", f"--out={out}", "--face_align", env_path=fake)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == ("error: dlib is not installed: pip install -r "
                                                 "requirements-teachers.txt (ImportError: no dlib here)")
    assert not out.exists()


@needs_dlib
def test_predict_aligns_each_image_for_a_model_of_aligned_faces(tmp_path, monkeypatch):
    from export import predict

    images = tmp_path / "faces"
    images.mkdir()
    for k, item in enumerate(synthetic.synthetic_items(1, 2, 96, seed=0)):
        (images / f"{k}.png").write_bytes(item.load())
    seen = []

    def fn(batch):
        seen.append(batch.shape)
        return {"embedding": np.ones((1, 4), np.float32)}

    alignment = {"landmarks": "dlib shape_predictor_5 on the middle two thirds", "padding": 0.25, "size": 80}
    monkeypatch.setattr(predict, "serving_function", lambda *a: (fn, "m", alignment))
    path = predict.run(str(images), str(tmp_path), "verify", "m", str(tmp_path / "out"), runner_factory=None)
    assert seen == [(1, 80, 80, 3)] * 2  # the 96 px images reach the model as 80 px aligned chips
    assert json.loads(open(path).read())["face_align"] == alignment


def test_predict_for_aligned_faces_without_dlib_is_one_line(monkeypatch):
    from export import predict
    from export.saved_model import ExportError

    def missing():
        raise face_align.DlibMissing("no dlib")
    monkeypatch.setattr(face_align, "import_dlib", missing)
    with pytest.raises(ExportError, match=r"^m: learned from faces aligned on 5 points \(--face_align\); aligning "
                                          r"these images needs dlib: pip install -r requirements-teachers.txt$"):
        predict.aligner({"size": 80, "padding": 0.25}, "m")
    assert predict.aligner(None, "m") is None  # a model of unaligned faces: images as they are


def test_an_export_folder_tells_predict_its_alignment(tmp_path):
    from export import predict

    sm = tmp_path / "export" / "student" / "saved_model" / "1"
    sm.mkdir(parents=True)
    assert predict._export_alignment(str(sm)) is None  # no export.json: nothing known, nothing done
    (tmp_path / "export" / "student" / "export.json").write_text('{"face_align": {"size": 144, "padding": 0.25}}')
    assert predict._export_alignment(str(sm)) == {"size": 144, "padding": 0.25}
