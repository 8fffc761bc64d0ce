"""results.json contract, results.md tables in the paper's shape, and plot files."""
import os

import numpy as np
import pytest

from keras_kd import plots
from keras_kd import results as R


def rec(name, role="student", d=8, init="scratch", targets=(), alpha=0, beta=0, metrics=None, **extra):
    return dict(name=name, role=role, width_divisor=d, init=init, targets=list(targets), alpha=alpha, beta=beta,
                params=1_500_000, flops=250_000_000, metrics=metrics or {}, **extra)


def make(task, models, **top):
    return dict(task=task, data="synthetic", preset="smoke", seed=7, models=models, **top)


def test_missing_file_is_empty_and_round_trip(tmp_path):
    path = tmp_path / "sub" / "results.json"
    r = R.Results.load(str(path))
    assert r.models == [] and r.get("teacher") is None
    r.data.update(task="classify", data="synthetic", preset="smoke", seed=3, extra_key={"a": 1})
    r.upsert(rec("teacher", role="teacher", d=1, metrics={"top1": np.float32(0.5)}, softmax=False))
    r.upsert(rec("student_d8_label", metrics={"top1": 0.25}, train_seconds=1.5))
    r.save()
    assert not [f for f in os.listdir(path.parent) if f != "results.json"]  # no temp file left behind
    back = R.Results.load(str(path))
    assert [m["name"] for m in back.models] == ["teacher", "student_d8_label"]
    kept_extra_key = back.get("student_d8_label")["train_seconds"]  # a stored field, not a timing
    assert back.get("teacher")["metrics"]["top1"] == 0.5 and kept_extra_key == 1.5
    assert back.data["extra_key"] == {"a": 1} and back.data["seed"] == 3 and "T" in back.data["updated"]


def test_upsert_replaces_in_place(tmp_path):
    r = R.Results(str(tmp_path / "r.json"), make("classify", []))
    for n in ("teacher", "student_d8_label", "student_d4_label"):
        r.upsert(rec(n))
    r.upsert(rec("student_d8_label", metrics={"top1": 0.9}))
    assert [m["name"] for m in r.models] == ["teacher", "student_d8_label", "student_d4_label"]
    assert r.get("student_d8_label")["metrics"] == {"top1": 0.9}
    with pytest.raises(ValueError, match="name"):
        r.upsert({"role": "student"})


@pytest.mark.parametrize("key,value", [("flops", 1.5), ("alpha", "1"), ("role", "pupil"), ("targets", ["soft", 3]),
                                       ("metrics", {"top1": "high"}), ("width_divisor", 0), ("params", True),
                                       ("softmax", "yes")])
def test_save_names_model_and_key(tmp_path, key, value):
    r = R.Results(str(tmp_path / "r.json"), make("classify", [rec("teacher", role="teacher", d=1)]))
    r.upsert(rec("student_d8_bad", **{key: value}) if key == "softmax" else {**rec("student_d8_bad"), key: value})
    with pytest.raises(ValueError, match=rf"student_d8_bad.*'{key}'"):
        r.save()
    assert not (tmp_path / "r.json").exists()


def test_save_checks_top_level_and_missing_keys(tmp_path):
    r = R.Results.load(str(tmp_path / "r.json"))
    with pytest.raises(ValueError, match="results: key 'task'"):
        r.save()  # empty results must be given a task first
    r.data.update(make("align", []))
    r.upsert({k: v for k, v in rec("teacher").items() if k != "params"})
    with pytest.raises(ValueError, match="model 'teacher': key 'params' missing"):
        r.save()
    r.models.append(rec("teacher"))
    r.models[0]["params"] = 1
    with pytest.raises(ValueError, match="'teacher'.*'name'"):
        r.save()  # duplicate name


def test_markdown_classify(tmp_path):
    models = [rec("teacher", role="teacher", d=1, metrics={"top1": 0.8861, "pair_acc": 0.9767}),
              rec("student_d8_label", d=8, metrics={"top1": 0.5512}),
              rec("student_d8_scratch_soft", d=8, targets=["soft"], alpha=1, metrics={"top1": 0.6449}),
              rec("student_d8_fitnet_soft", d=8, init="fitnet", targets=["soft"], alpha=1, metrics={"top1": 0.6988}),
              rec("student_d8_label_soft", d=8, init="label", targets=["soft"], alpha=1,
                  metrics={"top1": 0.7506, "pair_acc": 0.9618, "tflite_top1": 0.75}),
              rec("student_d2_label_soft", d=2, init="label", targets=["soft"], alpha=1, metrics={"top1": 0.9101}),
              rec("student_d8_scratch_hidden", d=8, targets=["hidden"], beta=1, metrics={"top1": 0.6008})]
    md = R.write_markdown(make("classify", models), str(tmp_path / "results.md"))
    assert (tmp_path / "results.md").read_text() == md
    assert "- note: last-epoch figures, not best-epoch" in md and "- seed: 7" in md and "- data: synthetic" in md
    assert "| metric | init | teacher | /2 | /8 |" in md  # widths sorted, teacher first
    assert "| top-1 | Label only | 88.61 | – | 55.12 |" in md
    assert "| top-1 | Scratch |  | – | 64.49 |" in md
    assert "| top-1 | FitNet |  | – | 69.88 |" in md
    assert "| top-1 | Ours (all layers initialized) |  | 91.01 | 75.06 |" in md
    assert "| pair acc | Label only | 97.67 | – | – |" in md
    assert "| pair acc | Ours (all layers initialized) |  | – | 96.18 |" in md
    assert "Table 1 shape (targets from scratch)" in md
    assert "| Hidden | – | 60.08 |" in md and "| Logits | – | – |" in md and "| Soft | – | 64.49 |" in md
    # full table: every model, units converted, export metric picked up generically
    assert "| name | role | network | init | targets | α | β | params (M) | FLOPs (G) | top1 (%) | pair_acc (%) " \
           "| tflite_top1 (%) |" in md
    assert "| student_d8_label_soft | student | /8 | label | soft | 1 | 0 | 1.500 | 0.250 | 75.06 | 96.18 | 75.00 |" in md


def test_markdown_classify_without_table1_or_pair_acc(tmp_path):
    md = R.write_markdown(make("classify", [rec("student_d4_label", d=4, metrics={"top1": 0.5})]),
                          str(tmp_path / "r.md"))
    assert "Table 1 shape" not in md and "pair acc" not in md
    assert "| top-1 | Label only | – | 50.00 |" in md  # no teacher → dash


def test_markdown_align(tmp_path):
    models = [rec("teacher", role="teacher", d=1, init="label", metrics={"nrmse": 3.02, "auc10": 0.7})]
    for init, values in (("pretrain", (3.36, 3.24, 3.60)), ("distill", (3.29, 3.21, 3.54))):
        for (a, b), v in zip(((0, 0), (0, 1), (1, 0)), values):
            models.append(rec(f"student_d8_{init}_a{a}b{b}", init=init, alpha=a, beta=b,
                              metrics={"nrmse": v, "nrmse_diag": v / 3, "failure_rate": 2.5, "auc10": 0.61234}))
    md = R.write_markdown(make("align", models), str(tmp_path / "r.md"))
    assert "## Table 3 shape, student /8: NRMSE % (lower is better); teacher 3.02" in md
    assert "| init | α=0,β=0 | α=0,β=1 | α=1,β=0 |" in md
    assert "| Pretrain | 3.36 | 3.24 | 3.60 |" in md and "| Distill | 3.29 | 3.21 | 3.54 |" in md
    assert "| Selected |" not in md  # the row of --transfer_inits=select, only when it ran
    assert "| model | nrmse (%) | nrmse_diag (%) | failure_rate (%) | auc10 |" in md
    assert "| student_d8_distill_a0b1 | 3.21 | 1.07 | 2.50 | 0.6123 |" in md
    assert "| teacher | 3.02 | – | – | 0.7 |" in md
    assert "## All models" in md
    models.append(rec("student_d8_select_a0b1", init="select", alpha=0, beta=1, metrics={"nrmse": 3.1}))
    md = R.write_markdown(make("align", models), str(tmp_path / "r.md"))
    assert "| Distill | 3.29 | 3.21 | 3.54 |\n| Selected | – | 3.10 | – |" in md


def test_markdown_verify(tmp_path):
    models = [rec("teacher", role="teacher", d=1, init="label", metrics={"rank1": 0.7381}, softmax=False),
              rec("teacher_softmax", role="teacher", d=1, init="label", metrics={"rank1": 0.7416}, softmax=True)]
    for softmax in (False, True):
        for d in (2, 4):
            for init in ("pretrain", "distill"):
                for a, b in ((0, 0), (0, 1), (1, 0)):
                    v = 0.5 + 0.1 * a + 0.05 * (init == "distill") + 0.2 * softmax - 0.01 * d
                    models.append(rec(f"student_d{d}_{init}_a{a}b{b}" + "_softmax" * softmax, d=d, init=init,
                                      alpha=a, beta=b, softmax=softmax,
                                      metrics={"rank1": v, "pair_acc": 0.9, "tar_at_far_1e-3": 0.25}))
    md = R.write_markdown(make("verify", models), str(tmp_path / "r.md"))
    t4 = md.index("## Table 4 shape")
    t5 = md.index("## Table 5 shape")
    assert t4 < t5
    assert "triplet loss only; teacher 73.81" in md and "triplet + softmax; teacher 74.16" in md
    table4, table5 = md[t4:t5], md[t5:md.index("## Verification metrics")]
    assert "| student | init | α=0,β=0 | α=0,β=1 | α=1,β=0 |" in table4
    # /2 pretrain, α=0,β=0: 0.5 - 0.02 = 48 %; α=1,β=0: +10 → 58 %; distill +5; softmax +20
    assert "| /2 | Pretrain | 48.00 | 48.00 | 58.00 |" in table4
    assert "| /4 | Distill | 51.00 | 51.00 | 61.00 |" in table4
    assert "| /2 | Pretrain | 68.00 | 68.00 | 78.00 |" in table5
    assert "| model | rank1 (%) | pair_acc (%) | tar_at_far_1e-3 (%) |" in md
    assert "| student_d4_distill_a1b0_softmax | 81.00 | 90.00 | 25.00 |" in md
    assert "| softmax |" in md.splitlines()[md.splitlines().index("## All models") + 2]  # extra key as a column


def test_markdown_verify_teacher_fallback(tmp_path):
    # no teacher trained with softmax: Table 5 falls back to the only teacher
    models = [rec("teacher", role="teacher", d=1, init="label", metrics={"rank1": 0.7}),
              rec("student_d8_distill_a1b0_softmax", init="distill", alpha=1, softmax=True, metrics={"rank1": 0.6})]
    md = R.write_markdown(make("verify", models), str(tmp_path / "r.md"))
    assert "Table 4 shape" not in md and "triplet + softmax; teacher 70.00" in md
    assert "| /8 | Pretrain | – |" in md and "| /8 | Distill | 60.00 |" in md


def test_format_metric_units():
    assert R.format_metric("top1", 0.5) == "50.00" and R.format_metric("pair_acc_std", 0.0123) == "1.23"
    assert R.format_metric("nrmse", 3.0) == "3.00" and R.format_metric("int8_nrmse", 3.0) == "3.00"
    assert R.format_metric("latency_ms", 12.3456) == "12.35" and R.format_metric("top1", float("nan")) == "–"


def _png_ok(path):
    data = open(path, "rb").read()
    return data.startswith(b"\x89PNG") and len(data) > 1000


def test_plots_write_png(tmp_path):
    pytest.importorskip("matplotlib")
    plots.plot_history({"teacher/train": {"loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.7, 1.4]},
                        "student_d8_label/train": {"loss": [2.5, 2.0]}}, str(tmp_path / "history.png"))
    rng = np.random.default_rng(0)
    plots.plot_ced({"teacher": rng.uniform(0, 0.08, 50), "student": rng.uniform(0, 0.12, (50, 5))},
                   str(tmp_path / "ced.png"))
    from keras_kd.metrics import roc
    same = np.arange(200) % 2 == 0
    dist = rng.normal(np.where(same, 0.5, 1.0), 0.3)
    fpr, tpr, _ = roc(dist, same)
    plots.plot_roc({"teacher": (fpr, tpr)}, str(tmp_path / "plots" / "roc.png"))
    for name in ("history.png", "ced.png", "plots/roc.png"):
        assert _png_ok(tmp_path / name), name
    assert sorted(os.listdir(tmp_path)) == ["ced.png", "history.png", "plots"]  # no temp files left


def test_markdown_export_table(tmp_path):
    model = {"name": "student_d8_distill_a0b1", "role": "student", "width_divisor": 8, "init": "distill",
             "targets": ["hidden"], "alpha": 0.0, "beta": 1.0, "params": 1, "flops": 1, "metrics": {"nrmse": 5.0},
             "export": {"keras": {"nrmse": 5.0},
                        "saved_model": {"size_bytes": 4096, "max_abs_diff": 1.2e-7},
                        "tflite_int8": {"size_bytes": 2048, "nrmse": 5.25}}}
    md = R.write_markdown({"task": "align", "models": [model]}, str(tmp_path / "r.md"))
    assert "| student_d8_distill_a0b1 | tflite_int8 | 2 | 5.25 | 5.00 |" in md
    assert "| student_d8_distill_a0b1 | saved_model | 4 | max abs diff 1.2e-07 | 5.00 |" in md
