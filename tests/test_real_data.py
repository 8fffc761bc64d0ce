"""Real faces end to end, on tiny subsets of ../shared/data (skipped without it): the converters the
configs/ use, a smoke run of each task that must compute its metrics, --seeds and --mode=evaluate."""
import json
import math
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA, run_main

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"{SHARED_DATA} not present")]

SMOKE = ["--preset=smoke", "--cls_inits=label", "--transfer_inits=distill", "--ab_grid=0:0", "--verify_softmax=on",
         "--noexport", "--verbose=0"]


def _convert(*args):
    r = subprocess.run([sys.executable, "-m", "keras_kd.data.convert", *args], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def _main(*args):
    r = run_main(*SMOKE, *args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _results(path):
    return {m["name"]: m for m in json.loads(path.read_text())["models"]}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """Tiny real sets (1,000 CelebA crops, 300 MTFL face crops), and classify, align (2 seeds), verify on them."""
    root = tmp_path_factory.mktemp("real")
    celeba, mtfl = root / "celeba", root / "mtfl"
    _convert("--layout=celeba", f"--src={SHARED_DATA / 'celeba_id_subset_144'}", f"--out={celeba}",
             "--max_images=1000")
    _convert("--layout=mtfl", f"--src={SHARED_DATA / 'mtfl_80x80' / 'new_training.txt'}", f"--out={mtfl}",
             "--max_images=300", "--face_crop")
    runs = root / "runs"
    logs = {"classify": _main("--task=classify", f"--data={celeba}", f"--model_dir={runs}", "--seeds=0").stdout,
            "align": _main("--task=align", f"--data={mtfl}", f"--cls_data={celeba}", f"--model_dir={runs}",
                           "--seeds=0,1").stdout,
            "verify": _main("--task=verify", f"--data={celeba}", f"--model_dir={runs}", "--seeds=0").stdout}
    return {"celeba": celeba, "mtfl": mtfl, "runs": runs, "logs": logs}


@pytest.mark.parametrize("task,metrics", [("classify", ["top1", "pair_acc"]),
                                          ("align", ["nrmse", "nrmse_diag", "failure_rate", "auc10"]),
                                          ("verify", ["rank1", "pair_acc", "tar_at_far_1e-3"])])
def test_each_task_computes_its_metrics_on_real_faces(real_run, task, metrics):
    models = _results(real_run["runs"] / "seed0" / task / "results.json")
    assert models and any(m["role"] == "teacher" for m in models.values())
    for m in models.values():
        for k in metrics:
            assert math.isfinite(m["metrics"][k]), (m["name"], k)
    assert "mean ± std over 1 seed(s)" in real_run["logs"][task] or task == "align"


def test_seeds_share_the_teacher_and_report_mean_and_std(real_run):
    runs = real_run["runs"]
    assert "sharing the teacher stages" in real_run["logs"]["align"]
    t0, t1 = (json.loads((runs / f"seed{s}" / "classify" / "stages" / "teacher.json").read_text()) for s in (0, 1))
    assert t0["seed"] == t1["seed"] == 0 and t0["metrics"] == t1["metrics"]
    s0, s1 = (_results(runs / f"seed{s}" / "align" / "results.json") for s in (0, 1))
    agg = {m["name"]: m for m in json.loads((runs / "align" / "seeds.json").read_text())["models"]}
    name = "student_d8_distill_a0b0"
    values = [s0[name]["metrics"]["nrmse"], s1[name]["metrics"]["nrmse"]]
    assert agg[name]["metrics"]["nrmse"] == pytest.approx(sum(values) / 2)
    assert agg[name]["metrics_std"]["nrmse"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert s0[name]["metrics"]["nrmse"] != s1[name]["metrics"]["nrmse"]  # the seed reached the student
    md = (runs / "align" / "seeds.md").read_text()
    assert "mean ± std over 2 seed(s) 0, 1 (teachers shared" in md and " ± " in md.split("Table 3 shape")[1]


@pytest.mark.parametrize("task,data", [("align", "mtfl"), ("verify", "celeba")])
def test_evaluate_on_the_training_data_gives_the_training_metrics(real_run, task, data):
    r = _main(f"--task={task}", "--mode=evaluate", f"--model_dir={real_run['runs']}", "--seeds=0",
              f"--eval_data={real_run[data]}", f"--cls_data={real_run['celeba']}")
    assert f"evaluated on {real_run[data]}" in r.stdout
    trained = _results(real_run["runs"] / "seed0" / task / "results.json")
    evaluated = _results(real_run["runs"] / "seed0" / task / f"eval_{data}.json")
    assert set(evaluated) == set(trained)
    for name, m in trained.items():
        for k, v in m["metrics"].items():
            assert evaluated[name]["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (name, k)
    assert (real_run["runs"] / "seed0" / task / f"eval_{data}.md").exists()
    assert (real_run["runs"] / task / f"eval_{data}.md").read_text().count(" ± ") > 0


def test_evaluate_classify_on_other_identities_leaves_top1_out(real_run):
    r = _main("--task=classify", "--mode=evaluate", f"--model_dir={real_run['runs'] / 'seed0'}",
              f"--eval_data={real_run['mtfl']}", f"--data={real_run['celeba']}")
    assert "other identities than the training data's, so top-1 is left out" in r.stdout
    evaluated = _results(real_run["runs"] / "seed0" / "classify" / "eval_mtfl.json")
    assert evaluated and all("top1" not in m["metrics"] for m in evaluated.values())
