"""results.md, methods.md, results.json and configs/collect.py's tables of fixed records, against text
rendered before the tables' task knowledge moved into the tasks (tests/data/tables/): same records, same bytes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_kd import results as R

DATA = Path(__file__).resolve().parent / "data" / "tables"
REPO = Path(__file__).resolve().parents[1]


def rec(name, role="student", d=8, init="scratch", targets=(), alpha=0.0, beta=0.0, metrics=None, **extra):
    return dict(name=name, role=role, width_divisor=d, init=init, targets=list(targets), alpha=alpha, beta=beta,
                params=1_500_000 // d, flops=250_000_000 // d, metrics=metrics or {}, **extra)


def _val(metrics, shift):
    return {k: round(v + shift, 4) for k, v in metrics.items()}


def classify_models():
    top = {"teacher": 0.8861, "student_d8_label": 0.5512, "student_d8_scratch_soft": 0.6449,
           "student_d8_fitnet_soft": 0.6988, "student_d8_label_soft": 0.7506, "student_d4_label": 0.6,
           "student_d4_label_soft": 0.8123, "student_d8_scratch_hidden": 0.6008, "student_d8_scratch_logits": 0.5977}
    inits = {"label_soft": ("label", ["soft"]), "scratch_soft": ("scratch", ["soft"]),
             "fitnet_soft": ("fitnet", ["soft"]), "scratch_hidden": ("scratch", ["hidden"]),
             "scratch_logits": ("scratch", ["logits"]), "label": ("scratch", [])}
    models = [rec("teacher", role="teacher", d=1, metrics={"top1": top["teacher"], "pair_acc": 0.9767},
                  softmax=False, train_seconds=120.25, epochs=30)]
    for name, v in top.items():
        if name == "teacher":
            continue
        d = int(name.split("_")[1][1:])
        init, targets = inits[name.split("_", 2)[2]]
        m = {"top1": v, "pair_acc": round(v + 0.2, 4)}
        models.append(rec(name, d=d, init=init, targets=targets, alpha=1.0 if "soft" in targets else 0.0,
                          metrics=m, val_metrics=_val(m, 0.01), train_seconds=10.0 + d, epochs=20))
    models.append(rec("student_d8_label_dkd", init="label", targets=["dkd"], method="dkd",
                      metrics={"top1": 0.7612, "pair_acc": 0.95}, val_metrics={"top1": 0.77, "pair_acc": 0.95}))
    models.append(rec("student_d8_label_none", init="label", method="none",
                      metrics={"top1": 0.5601}, val_metrics={"top1": 0.57}))
    models.append(rec("student_mbf_label_soft", d=1, init="label", targets=["soft"], alpha=1.0, arch="mobilefacenet",
                      width=1.0, network="mbf", metrics={"top1": 0.7801, "pair_acc": 0.96},
                      val_metrics={"top1": 0.79, "pair_acc": 0.96},
                      export={"keras": {"top1": 0.7801}, "tflite_int8": {"size_bytes": 1_234_567, "top1": 0.775,
                                                                         "latency_ms": 5.3}}))
    ours = next(m for m in models if m["name"] == "student_d8_label_soft")
    ours["export"] = {"keras": {"top1": 0.7506}, "saved_model": {"size_bytes": 4_000_000, "max_abs_diff": 2.5e-7},
                      "tflite_fp32": {"size_bytes": 1_600_000, "top1": 0.7506},
                      "tflite_int8": {"size_bytes": 420_000, "top1": 0.7405, "latency_ms": 0.12},
                      "pruned_fp32": {"size_bytes": 1_600_000, "top1": 0.73}}
    models.append(rec("student_d8_label_soft_tc", init="label", targets=["soft"], alpha=1.0, teacher_cache=True,
                      metrics={"top1": 0.7455, "pair_acc": 0.95}, val_metrics={"top1": 0.75},
                      train_seconds=9.0))
    return models


def align_models():
    m0 = {"nrmse": 3.02, "nrmse_diag": 1.01, "failure_rate": 1.5, "auc10": 0.7, "nrmse_left_eye": 2.9}
    models = [rec("teacher", role="teacher", d=1, init="classify", metrics=m0)]
    for d in (8, 4):
        for init, base in (("pretrain", 3.36), ("distill", 3.29)):
            for i, (a, b) in enumerate(((0, 0), (0, 1), (1, 0))):
                v = round(base - 0.04 * i - 0.1 * (d == 4), 4)
                m = {"nrmse": v, "nrmse_diag": round(v / 3, 4), "failure_rate": 2.5 + i, "auc10": 0.61234,
                     "nrmse_left_eye": v + 0.1}
                models.append(rec(f"student_d{d}_{init}_a{a}b{b}", d=d, init=init, alpha=a, beta=b,
                                  targets=[t for t, w in (("soft", a), ("hidden", b)) if w], metrics=m,
                                  val_metrics=_val(m, -0.05)))
    models.append(rec("student_d8_distill_at", init="distill", targets=["at"], method="at",
                      metrics={"nrmse": 3.1, "failure_rate": 2.0}))  # no val figure: chosen by test
    models.append(rec("student_d8_distill_a0b1_tc", init="distill", beta=1.0, targets=["hidden"],
                      teacher_cache=True, metrics={"nrmse": 3.3, "failure_rate": 3.0}, train_seconds=5.0))
    models.append(rec("student_mv3s_x0p5_distill_a0b1", d=1, init="distill", beta=1.0, targets=["hidden"],
                      arch="mobilenet_v3_small", width=0.5, network="mv3s_x0p5", metrics={"nrmse": 3.5}))
    models[3]["export"] = {"keras": {"nrmse": 3.28}, "tflite_fp16": {"size_bytes": 900_000, "nrmse": 3.2801},
                           "tflite_dynamic": {"size_bytes": 500_000, "nrmse": 3.3}}
    return models


def verify_models():
    models = [rec("teacher", role="teacher", d=1, init="classify", metrics={"rank1": 0.7381}, softmax=False),
              rec("teacher_softmax", role="teacher", d=1, init="classify", metrics={"rank1": 0.7416}, softmax=True)]
    for softmax in (False, True):
        for d in (2, 8):
            for init in ("pretrain", "distill"):
                for a, b in ((0, 0), (0, 1), (1, 0)):
                    v = round(0.5 + 0.1 * a + 0.05 * (init == "distill") + 0.2 * softmax - 0.01 * d, 4)
                    m = {"rank1": v, "pair_acc": 0.9, "pair_acc_std": 0.012, "tar_at_far_1e-3": 0.25, "pairs": 600.0}
                    models.append(rec(f"student_d{d}_{init}_a{a}b{b}" + "_softmax" * softmax, d=d, init=init,
                                      alpha=a, beta=b, softmax=softmax, metrics=m, val_metrics=_val(m, 0.02),
                                      metrics_std={"rank1": 0.0123, "pair_acc": 0.004},
                                      val_metrics_std={"rank1": 0.02}, seeds=[0, 1, 2], n_seeds=3))
        models.append(rec("student_d8_distill_dkd" + "_softmax" * softmax, init="distill", targets=["dkd"],
                          method="dkd", softmax=softmax, metrics={"rank1": 0.61 + 0.1 * softmax, "pair_acc": 0.88}))
    models.append(rec("student_d8_distill_rank1nan", init="distill", targets=["soft", "hidden"], alpha=1.0, beta=1.0,
                      metrics={"rank1": float("nan"), "pair_acc": 0.5}))
    return models


MODELS = {"classify": classify_models, "align": align_models, "verify": verify_models}


def results_of(task):
    top = {"eval_data": "data/other", "trained_on": "data/train"} if task == "align" else {}
    return dict(task=task, data="synthetic", preset="quick", seed=3, updated="2024-01-02T03:04:05+00:00",
                models=MODELS[task](), **top)


@pytest.mark.parametrize("task", sorted(MODELS))
def test_results_md_unchanged(tmp_path, task):
    md = R.write_markdown(results_of(task), str(tmp_path / "results.md"))
    assert md == (DATA / f"{task}.md").read_text(encoding="utf-8")


def test_methods_md_unchanged():
    md = R.methods_markdown({t: results_of(t) for t in MODELS})
    assert md == (DATA / "methods.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("task", sorted(MODELS))
def test_results_json_unchanged(tmp_path, task):
    r = R.Results(str(tmp_path / "results.json"), results_of(task))
    r.save()
    text = (tmp_path / "results.json").read_text(encoding="utf-8")
    stamp = json.loads(text)["updated"]
    expected = (DATA / f"{task}.json").read_text(encoding="utf-8")
    assert text.replace(stamp, "2024-01-02T03:04:05+00:00") == expected


def _collect_runs(root):
    """Fake --seeds runs of every table collect.py prints: seed 0 and 1, one model only in seed 0, a teacher
    shared by both, a missing pair_acc."""
    names = {"classify": ["teacher", "student_d8_label", "student_d8_scratch_hidden", "student_d8_scratch_logits",
                          "student_d8_scratch_soft", "student_d8_fitnet_soft", "student_d8_label_soft",
                          "student_d2_label", "student_d2_label_soft", "student_d4_label"],
             "align": ["teacher"] + [f"student_d8_{i}_a{a}b{b}" for i in ("pretrain", "distill")
                                     for a, b in ((0, 0), (0, 1), (1, 0))],
             "verify": [f"{n}{s}" for s in ("_softmax", "") for n in ["teacher"] + [
                 f"student_d8_{i}_a{a}b{b}" for i in ("pretrain", "distill") for a, b in ((0, 0), (0, 1), (1, 0))]]}
    for seed in (0, 1):
        for task, ns in names.items():
            models = []
            for i, n in enumerate(ns):
                if seed == 1 and n in ("student_d8_scratch_logits", "student_d8_distill_a1b0"):
                    continue
                v = 0.003 * i + 0.011 * seed * (not n.startswith("teacher"))
                m = ({"nrmse": 3.5 - 10 * v, "failure_rate": 4.0 + 100 * v} if task == "align"
                     else {"top1" if task == "classify" else "rank1": 0.55 + v, "pair_acc": 0.9 - v})
                if n == "student_d8_fitnet_soft":
                    del m["pair_acc"]
                models.append(rec(n, role="teacher" if n.startswith("teacher") else "student", metrics=m,
                                  seed=0 if n.startswith("teacher") else seed))
            path = root / f"seed{seed}" / task / "results.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"task": task, "models": models}))


def test_collect_tables_unchanged(tmp_path):
    _collect_runs(tmp_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(REPO / "configs" / "collect.py"), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == (DATA / "collect.md").read_text(encoding="utf-8")
