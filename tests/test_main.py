"""End to end: `python main.py` on the smoke preset, as a user runs it (subprocesses, real files)."""
import json

import pytest

from conftest import ok, run_main
from keras_kd import results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def _results(model_dir, task):
    data = json.loads((model_dir / task / "results.json").read_text())
    results.validate(data)
    return {m["name"]: m for m in data["models"]}, data


def test_classify_trains_distills_and_reports(model_dir):
    out = ok(run_main("--task=classify", "--preset=smoke", f"--model_dir={model_dir}", "--verbose=0",
                      "--noexport"))
    models, data = _results(model_dir, "classify")
    assert data["task"] == "classify" and data["preset"] == "smoke" and "synthetic" in data["data"]
    assert set(models) == {"teacher", "student_d8_label", "student_d8_scratch_soft", "student_d8_fitnet_soft",
                           "student_d8_label_soft", "student_d8_select", "student_d8_select_soft"}
    selected = sum(1 for line in out.splitlines() if line.startswith("[stage] classify/student_d8_select: initialized")
                   and line.endswith("layers from classify/teacher"))
    assert selected == 1 and (models["student_d8_select"]["init"], models["student_d8_select_soft"]["init"]) == (
        "select", "selected")
    assert all(0 <= m["metrics"]["top1"] <= 1 for m in models.values())
    assert models["student_d8_label_soft"]["init"] == "label"
    assert models["student_d8_label_soft"]["targets"] == ["soft"]
    assert models["teacher"]["params"] > 40 * models["student_d8_label"]["params"]
    md = (model_dir / "classify" / "results.md").read_text()
    assert "Table 2 shape" in md and "Ours (all layers initialized)" in md and "Scratch" in md
    assert "| top-1 | Selected, + soft |" in md
    assert (model_dir / "classify" / "training_curves.png").stat().st_size > 1000
    assert "Table 2 shape" in out  # the table is printed too


def test_rerun_reuses_finished_stages(model_dir):
    out = ok(run_main("--task=classify", "--preset=smoke", f"--model_dir={model_dir}", "--verbose=0",
                      "--noexport"))
    assert "reusing" in out and ": training " not in out  # no stage line "[stage] T/NAME: training N epochs"


def test_teacher_cache_trains_the_cached_twin_of_ours(model_dir):
    # Reuses the teacher and label-only student above; only the student on cached targets is new.
    out = ok(run_main("--task=classify", "--preset=smoke", f"--model_dir={model_dir}", "--verbose=0",
                      "--noexport", "--cls_inits=label", "--teacher_cache=disk"))
    assert "classify/student_d8_label: reusing" in out and out.count(": training ") == 1
    assert "classify/student_d8_label_soft_tc: training" in out
    assert "[teacher cache] computed" in out and "[teacher cache] wrote" in out
    models, _ = _results(model_dir, "classify")
    assert models["student_d8_label_soft_tc"]["teacher_cache"] == "disk"
    assert "teacher_cache" not in models["student_d8_label_soft"]  # the online one is still there, apart
    assert len(list(model_dir.glob("data/synthetic-*/teacher_cache/*.npz"))) == 1
    md = (model_dir / "classify" / "results.md").read_text()
    assert "## Teacher cache" in md and "| student_d8_label_soft |" in md


def test_align_transfers_and_ships(model_dir):
    # Reuses the classification stages above (same model_dir, same shapes).
    out = ok(run_main("--task=align", "--preset=smoke", f"--model_dir={model_dir}", "--verbose=0",
                      "--ab_grid=0:1,1:0", "--transfer_inits=pretrain,distill,select"))
    assert "classify/teacher: reusing" in out
    selected = [line for line in out.splitlines()
                if line.startswith("[stage] align/student_d8_select_a0b1: initialized")]
    assert len(selected) == 1 and selected[0].endswith("layers from align/teacher")
    models, _ = _results(model_dir, "align")
    md = (model_dir / "align" / "results.md").read_text()
    assert {"teacher", "student_d8_pretrain", "student_d8_distill_a0b1", "student_d8_pretrain_a1b0"} <= set(models)
    for m in models.values():
        assert {"nrmse", "nrmse_diag", "failure_rate", "auc10"} <= set(m["metrics"])
    assert "Table 3 shape" in md and "| Pretrain |" in md and "| Distill |" in md and "| Selected |" in md
    assert models["student_d8_select_a1b0"]["init"] == "select"
    assert (model_dir / "align" / "ced.png").stat().st_size > 1000
    # main.py ships the best student per width, chosen on the validation split (the test split only
    # measures): servable SavedModel + phone-ready TFLite, measured.
    best = min((m for m in models.values() if m["role"] == "student"), key=lambda m: m["val_metrics"]["nrmse"])
    assert f"[export] align: {best['name']} (best by validation nrmse)" in out
    shipped = model_dir / "align" / "export" / best["name"]
    assert (shipped / "saved_model" / "1" / "saved_model.pb").exists()
    for kind in ("fp32", "fp16", "dynamic", "int8"):
        assert (shipped / "tflite" / f"model_{kind}.tflite").stat().st_size > 10_000
        assert best["metrics"][f"tflite_{kind}_nrmse"] > 0
    assert "tflite_int8_nrmse" in md
    # The run's picture: test faces with the true, the teacher's and the best student's landmarks.
    assert (model_dir / "align" / "alignment_examples.png").stat().st_size > 10_000


def test_predict_runs_a_stage_and_an_export_on_a_folder(model_dir, tmp_path):
    from PIL import Image
    import numpy as np
    images = tmp_path / "faces"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 40), (64, 50)]):  # any size: the serving graph resizes
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / f"face{i}.png")
    (images / "notes.txt").write_text("not an image")  # ignored: not an image extension
    export_dir = next((model_dir / "align" / "export").iterdir())
    for model, out in [("student_d8_pretrain", tmp_path / "stage"), (str(export_dir), tmp_path / "export")]:
        ok(run_main("--task=align", "--preset=smoke", f"--model_dir={model_dir}", "--mode=predict",
                    f"--images={images}", f"--model={model}", f"--predict_dir={out}"))
        pred = json.loads((out / "predictions.json").read_text())["predictions"]
        assert [p["image"] for p in pred] == ["face0.png", "face1.png"]
        assert all(np.asarray(p["landmarks"]).shape == (5, 2) for p in pred)
        assert (pred[1]["height"], pred[1]["width"]) == (64, 50)
        assert (out / "face1.png").stat().st_size > 1000
        assert (out / "predictions.csv").read_text().splitlines()[0].startswith("image,height,width,x1,y1")
    # A stage and its export predict the same landmarks (one serving graph).
    stage = json.loads((tmp_path / "stage" / "predictions.json").read_text())["predictions"]
    shipped = json.loads((tmp_path / "export" / "predictions.json").read_text())["predictions"]
    if export_dir.name == "student_d8_pretrain":
        np.testing.assert_allclose([p["landmarks"] for p in stage], [p["landmarks"] for p in shipped], atol=0.05)


@pytest.mark.parametrize("what, message", [("missing", "does not exist"), ("empty", "no image files"),
                                           ("broken", "not a readable image")])
def test_predict_bad_input_is_one_clear_line(model_dir, tmp_path, what, message):
    images = tmp_path / "in"
    if what != "missing":
        images.mkdir()
    if what == "broken":
        (images / "face.jpg").write_bytes(b"not a jpeg")
    proc = run_main("--task=align", "--preset=smoke", f"--model_dir={model_dir}", "--mode=predict",
                    f"--images={images}", "--model=student_d8_pretrain")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and str(images) in last


def test_verify_triplet_softmax(model_dir):
    ok(run_main("--task=verify", "--preset=smoke", f"--model_dir={model_dir}", "--verify_softmax=off,on", "--ab_grid=1:0", "--transfer_inits=distill",
                "--verbose=0", "--noexport"))
    models, _ = _results(model_dir, "verify")
    assert {"teacher", "teacher_softmax", "student_d8_distill_a1b0", "student_d8_distill_a1b0_softmax"} <= set(models)
    assert models["student_d8_distill_a1b0_softmax"]["softmax"] is True
    for m in models.values():
        assert 0 <= m["metrics"]["rank1"] <= 1 and 0 <= m["metrics"]["pair_acc"] <= 1
    md = (model_dir / "verify" / "results.md").read_text()
    assert "Table 4 shape" in md and "Table 5 shape" in md
    assert (model_dir / "verify" / "roc.png").stat().st_size > 1000


def test_methods_classify(model_dir):
    # Reuses every classification stage above; trains one student per added method, as Ours is trained.
    out = ok(run_main("--task=classify", "--preset=smoke", f"--model_dir={model_dir}", "--verbose=0",
                      "--noexport", "--methods=dkd,at"))
    assert "classify/student_d8_label: reusing" in out and out.count(": training ") == 2
    models, _ = _results(model_dir, "classify")
    for method in ("dkd", "at"):
        m = models[f"student_d8_label_{method}"]
        assert (m["method"], m["init"], m["targets"]) == (method, "label", [method])
        assert 0 <= m["metrics"]["top1"] <= 1
    md = (model_dir / "classify" / "results.md").read_text()
    assert "## Distillation methods, student /8" in md and "Distillation methods" in out
    for row in ("| soft | student_d8_label_soft | label |", "| dkd | student_d8_label_dkd | label |",
                "| at | student_d8_label_at | label |"):
        assert row in md


def test_methods_verify_and_the_table_across_tasks(model_dir):
    # soft is the α=1,β=0 stage trained above: only the RKD student is new.
    out = ok(run_main("--task=verify", "--preset=smoke", f"--model_dir={model_dir}", "--verify_softmax=on",
                      "--ab_grid=1:0", "--transfer_inits=distill", "--methods=rkd,soft", "--verbose=0",
                      "--noexport"))
    assert out.count(": training ") == 1 and "verify/student_d8_distill_rkd_softmax: training" in out
    models, _ = _results(model_dir, "verify")
    m = models["student_d8_distill_rkd_softmax"]
    assert (m["method"], m["init"], m["softmax"]) == ("rkd", "distill", True) and 0 <= m["metrics"]["rank1"] <= 1
    assert "| rkd | student_d8_distill_rkd_softmax | distill |" in (model_dir / "verify" / "results.md").read_text()
    # One column per task (and verification variant: the triplet-only one was run above too).
    joint = (model_dir / "methods.md").read_text()
    assert "| method | classify top1 (%) | verify rank1 (%) | verify rank1 (%) (+softmax) |" in joint
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.split("|")[1:-1]] for line in joint.splitlines()
                                  if line.startswith("| "))}
    assert {"soft", "dkd", "at", "rkd", "(teacher)"} <= set(rows)
    assert rows["rkd"][:2] == ["–", "–"] and rows["rkd"][2] != "–" and rows["dkd"][1:] == ["–", "–"]
    assert "–" not in rows["soft"]  # Ours in classification, the α=1,β=0 students in verification


def test_changed_shapes_are_not_silently_reused(model_dir):
    proc = run_main("--task=classify", "--preset=smoke", f"--model_dir={model_dir}", "--image_size=40")
    assert proc.returncode == 2
    assert "saved with image_size=32 (now 40)" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--students=0"], "--students: positive integers"),
    (["--task=segment"], "task"),
    (["--ab_grid=1"], "--ab_grid"),
    (["--strategy=gpu_cluster"], "strategy"),
    (["--backup_steps=-1"], "backup_steps"),
])
def test_bad_flags_exit_with_a_clear_message(args, message, tmp_path):
    proc = run_main("--preset=smoke", f"--model_dir={tmp_path}", *args)
    assert proc.returncode != 0 and message in proc.stderr


def test_missing_data_dir_is_one_clear_line(tmp_path):
    proc = run_main("--task=classify", "--preset=smoke", f"--model_dir={tmp_path}", f"--data={tmp_path}/nope")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path}/nope: data directory does not exist"
