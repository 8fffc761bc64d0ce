"""The dlib teacher writer (keras_kd/teachers/dlib.py): a checked teacher-outputs file of 128-d descriptors
for both splits, its CLI and error lines, and on real faces (../shared, skipped without it) a real signal.
Skipped without the optional teachers (pip install -r requirements-teachers.txt)."""
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")

from conftest import REPO, SHARED_DATA  # noqa: E402
from keras_kd.data import layouts, synthetic  # noqa: E402
from keras_kd.data.example import write_dataset  # noqa: E402
from keras_kd.teachers import dlib as dlib_teacher  # noqa: E402
from keras_kd.teachers import outputs  # noqa: E402

CELEBA = SHARED_DATA / "celeba_id_subset_144"


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "keras_kd.teachers.dlib", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 identities × 4 synthetic faces at 64 px: meaningless but finite descriptors, for the plumbing."""
    d = str(tmp_path_factory.mktemp("synthetic"))
    meta = synthetic.write_synthetic(d, 3, 4, 64, seed=0, log=lambda *_: None)
    assert meta["splits"]["train"] and meta["splits"]["test"]
    return d, meta["splits"]


@pytest.fixture(scope="module")
def written(data, tmp_path_factory):
    d, _ = data
    lines = []
    path = dlib_teacher.write(d, str(tmp_path_factory.mktemp("out") / "dlib.npz"), processes=1, log=lines.append)
    return path, lines


def test_the_file_holds_a_checked_128_d_embedding_of_every_record(data, written):
    d, counts = data
    path, lines = written
    cache = outputs.load(path, d, "train")
    for k in ("embedding", "hidden"):
        emb = cache.outputs[k]
        assert emb.shape == (counts["train"], 128) and np.all(np.isfinite(emb))
    norms = np.linalg.norm(cache.outputs["embedding"], axis=1)
    assert np.all((norms > 0.8) & (norms < 2.0)), norms  # dlib's descriptors are not unit: ~1.3-1.6 here
    ev = outputs.eval_outputs(path, d)
    assert ev["embedding"].shape == (counts["test"], 128)
    assert list(ev["source"]) == [s.encode() for s in outputs.data_records(d, "test")["source"]]
    meta, *_ = outputs.read(path)
    assert meta["teacher"] == dlib_teacher.TEACHER and meta["chip_size"] == 150
    assert lines[-1].startswith(f"[dlib] wrote {sum(counts.values())} embeddings ({counts['train']} train, "
                                f"{counts['test']} test) to {path}") and lines[-1].endswith("images/s")


def test_the_cli_writes_beside_the_data_with_2_processes_the_same_descriptors(data, written):
    d, counts = data
    proc = _cli(d, "--processes=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = os.path.join(d, "teacher_outputs", "dlib.npz")
    assert f"[dlib] wrote {sum(counts.values())} embeddings" in proc.stdout and "2 process(es)" in proc.stdout
    _, src_a, _, out_a = outputs.read(path)
    _, src_b, _, out_b = outputs.read(written[0])
    assert list(src_a) == list(src_b)
    np.testing.assert_allclose(out_a["embedding"], out_b["embedding"], atol=1e-5)  # per-process models agree


def test_flip_adds_the_mirror_images_descriptors(data, written, tmp_path):
    d, counts = data
    path = dlib_teacher.write(d, str(tmp_path / "flip.npz"), processes=1, log=lambda *_: None, flip=True)
    _, src, _, out = outputs.read(path)
    _, src0, _, out0 = outputs.read(written[0])
    assert list(src) == list(src0) and set(out) == {"embedding", "embedding_flip", "hidden", "hidden_flip"}
    np.testing.assert_allclose(out["embedding"], out0["embedding"], atol=1e-5)  # the un-flipped view unchanged
    dlib_teacher._init(150)
    first = next(dlib_teacher._records(d, ["train"]))[2]
    np.testing.assert_allclose(out["embedding_flip"][0], dlib_teacher.embed_images([first[:, ::-1].copy()])[0],
                               atol=1e-5)


def test_another_chip_size_is_resized_to_the_networks_150(data, tmp_path):
    d, counts = data
    path = dlib_teacher.write(d, str(tmp_path / "small.npz"), chip_size=64, processes=1, log=lambda *_: None)
    emb = outputs.load(path, d).outputs["embedding"]
    assert emb.shape == (counts["train"], 128) and np.all(np.isfinite(emb))
    assert outputs.read(path)[0]["chip_size"] == 64


def test_data_dir_without_meta_json_is_one_line_and_exit_2(tmp_path):
    proc = _cli(str(tmp_path))
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]  # not TF's start-up lines
    assert errors == [f"error: {tmp_path / 'meta.json'}: missing; convert the data first "
                      "(python -m keras_kd.data.convert)"]
    assert not (tmp_path / "teacher_outputs").exists()


def test_a_missing_data_dir_is_named(tmp_path, capsys):
    assert dlib_teacher.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: data directory does not exist\n"


@pytest.mark.slow
@pytest.mark.skipif(not CELEBA.exists(), reason=f"{CELEBA} not present")
def test_on_real_faces_the_same_person_is_closer_than_another(tmp_path):
    # 60 crops: the first 15 images of the first 4 identities with at least 15.
    items, _ = layouts.celeba(str(CELEBA))
    by_id = defaultdict(list)
    for it in items:
        by_id[it.label].append(it)
    chosen = [it for label in sorted(k for k, v in by_id.items() if len(v) >= 15)[:4] for it in by_id[label][:15]]
    d = str(tmp_path / "celeba60")
    write_dataset(d, chosen, "celeba-60", log=lambda *_: None)
    path = dlib_teacher.write(d, processes=2, log=lambda *_: None)
    train, test = outputs.load(path, d), outputs.eval_outputs(path, d)
    emb = np.concatenate([train.outputs["embedding"], test["embedding"]])
    labels = np.concatenate([outputs.data_records(d, "train")["label"], test["label"]])
    assert len(emb) == 60 and len(set(labels)) == 4
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    same = labels[:, None] == labels[None]
    off = ~np.eye(len(emb), dtype=bool)
    d_same, d_diff = dist[same & off].mean(), dist[~same].mean()
    assert d_same < 0.7 * d_diff, (d_same, d_diff)  # dlib's threshold is 0.6; 0.46 vs 0.85 on 692 unseen crops
    nearest = np.where(off, dist, np.inf).argmin(axis=1)
    assert np.mean(labels[nearest] == labels) > 0.8
