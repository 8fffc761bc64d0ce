"""A killed run resumes where it was; a diverging stage stops cleanly; two workers train as one.

End to end, as a user runs it: `python main.py` (or the launcher) in subprocesses on the smoke preset.
"""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import REPO, kill_after_first_backup, run_main
from keras_kd import results

pytestmark = pytest.mark.slow

# The smallest distillation run: teacher → label-only /8 student → distilled /8 student.
SMALL = ["--task=classify", "--preset=smoke", "--cls_inits=label", "--verbose=2", "--noexport"]


def _weights(path):
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Starts a run, kill -9s it once the teacher has a backup, runs the same command again."""
    model_dir = tmp_path_factory.mktemp("runs")
    args = [*SMALL, f"--model_dir={model_dir}", "--teacher_epochs=3"]
    kill_after_first_backup(args, model_dir / "classify" / "backup" / "teacher")
    assert not (model_dir / "classify" / "stages" / "teacher.json").exists()
    rerun = run_main(*args)
    return model_dir, rerun


def test_rerun_resumes_the_killed_stage_without_repeating_epochs(killed_and_resumed):
    model_dir, rerun = killed_and_resumed
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-3000:]
    assert "[stage] classify/teacher: resuming at epoch" in out
    assert "Epoch 1/3" not in out  # the teacher's first epoch was not trained again
    record = json.loads((model_dir / "classify" / "stages" / "teacher.json").read_text())
    assert record["resumed_at_epoch"] >= 2  # after the backup of epoch 1 at least
    assert len(record["history"]["loss"]) == 3 and all(np.isfinite(record["history"]["loss"]))
    data = json.loads((model_dir / "classify" / "results.json").read_text())
    results.validate(data)
    assert {m["name"] for m in data["models"]} == {"teacher", "student_d8_label", "student_d8_label_soft"}
    assert not (model_dir / "classify" / "backup" / "teacher").exists()  # removed once the stage is saved


def test_a_model_dir_of_other_data_is_not_reused(killed_and_resumed):
    model_dir, _ = killed_and_resumed
    proc = run_main(*SMALL, f"--model_dir={model_dir}", "--teacher_epochs=3", "--synthetic_images=12")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {model_dir}/classify/stages/teacher.json: saved with data=") and \
        "--overwrite" in last, last


def test_a_backup_of_other_settings_is_discarded_not_resumed(tmp_path):
    from keras_kd.config import Config
    from keras_kd.keras import tf
    from keras_kd.stages import Runner
    from keras_kd.tasks import Stage

    logs = []
    runner = Runner(Config(model_dir=str(tmp_path)), tf.distribute.get_strategy(), log=logs.append)
    stage = Stage("classify", "teacher", 1, "scratch", 2, 0.1)
    backup = runner.backup_dir(stage)
    assert runner._prepare_backup(stage, {"lr": 0.1}) == backup  # a fresh one records what it backs up
    (tmp_path / "classify" / "backup" / "teacher" / "chief").mkdir()
    assert runner._prepare_backup(stage, {"lr": 0.1}) == backup and os.path.isdir(f"{backup}/chief")
    assert not logs  # same settings: kept, to be resumed
    runner._prepare_backup(stage, {"lr": 0.2})
    assert logs == [f"[stage] classify/teacher: discarding the backup in {backup} (made with other settings (lr))"]
    assert not os.path.exists(f"{backup}/chief")
    assert json.loads(open(f"{backup}/stage.json").read()) == {"lr": 0.2}


def test_two_workers_train_identical_weights_and_the_chief_alone_reports(tmp_path):
    """A ResNet teacher and a MobileFaceNet student (label, then distilled) on 2 workers (ResNet students on
    2 workers: tests/test_external_teacher.py's two-worker test)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "keras_kd.launch", "--workers=2", "--", "main.py", *SMALL,
                           f"--model_dir={tmp_path}", "--teacher_epochs=1", "--verbose=0",
                           "--student_arch=mobilefacenet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "[worker 1] [done] worker 1: finished" in out and "[worker 0] [done] 3 models" in out
    chief = tmp_path / "classify" / "stages"
    other = tmp_path / ".workers" / "worker-1" / "classify" / "stages"
    for name in ("teacher", "student_mbf_label", "student_mbf_label_soft"):
        a, b = _weights(chief / f"{name}.weights.h5"), _weights(other / f"{name}.weights.h5")
        assert a.keys() == b.keys() and len(a) > 50
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=f"{name}: {key}")
    results.validate(json.loads((tmp_path / "classify" / "results.json").read_text()))
    assert not list((tmp_path / ".workers").rglob("results.*"))  # written once, by the chief
