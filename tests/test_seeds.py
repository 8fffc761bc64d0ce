"""--seeds (mean ± std, shared teachers), --mode=evaluate's checks, and the configs/ flagfiles."""
import json
from pathlib import Path

import pytest
from absl import flags

from keras_kd import evaluate, results, seeds
from keras_kd.config import Config
from keras_kd.data.example import DataError
from keras_kd.stages import StageError

REPO = Path(__file__).resolve().parents[1]


def _record(name, role="student", **metrics):
    return {"name": name, "role": role, "width_divisor": 1 if role == "teacher" else 8, "init": "label",
            "targets": ["soft"], "alpha": 1.0, "beta": 0.0, "params": 10, "flops": 20, "metrics": metrics,
            "seed": 0, "image_size": 32, "num_classes": 3}


def _results(seed, top1, teacher_seed=0):
    return {"task": "classify", "data": "d", "preset": "smoke", "seed": seed,
            "models": [dict(_record("teacher", "teacher", top1=0.5), seed=teacher_seed),
                       dict(_record("student_d8_label_soft", top1=top1), seed=seed)]}


def test_aggregate_gives_mean_and_sample_std():
    agg = seeds.aggregate({0: _results(0, 0.40), 1: _results(1, 0.44), 2: _results(2, 0.48)})
    student = next(m for m in agg["models"] if m["name"] == "student_d8_label_soft")
    assert student["metrics"]["top1"] == pytest.approx(0.44)
    assert student["metrics_std"]["top1"] == pytest.approx(0.04)  # sample std of 0.40, 0.44, 0.48
    assert student["n_seeds"] == 3 and student["trained_with_seeds"] == [0, 1, 2]
    teacher = next(m for m in agg["models"] if m["name"] == "teacher")
    assert teacher["metrics_std"]["top1"] == 0 and teacher["trained_with_seeds"] == [0]
    results.validate(agg)


def test_a_model_of_one_seed_gets_no_std_and_finished_finds_every_seed(tmp_path):
    one = _results(3, 0.5)
    one["models"].append(_record("student_d8_extra", top1=0.3))
    agg = seeds.aggregate({0: _results(0, 0.40), 3: one})
    extra = next(m for m in agg["models"] if m["name"] == "student_d8_extra")
    assert extra["n_seeds"] == 1 and extra["metrics_std"] == {}
    assert results.cell(extra, "top1") == "30.00"
    for s, res in ((0, _results(0, 0.4)), (3, one)):
        results.Results(str(tmp_path / f"seed{s}" / "classify" / "results.json"), res).save()
    (tmp_path / "seedling" / "classify").mkdir(parents=True)
    assert sorted(seeds.finished(str(tmp_path), "classify")) == [0, 3]


def test_seeds_markdown_shows_mean_and_std_and_says_the_teacher_is_shared(tmp_path):
    text = seeds.write(str(tmp_path), "classify", {0: _results(0, 0.40), 1: _results(1, 0.44)})
    assert "mean ± std over 2 seed(s) 0, 1 (teachers shared" in text
    assert "42.00 ± 2.83" in text  # Ours row of the Table 2 shape
    own = seeds.write(str(tmp_path), "classify", {0: _results(0, 0.40), 1: _results(1, 0.44, teacher_seed=1)})
    assert "teachers shared" not in own
    assert json.loads((tmp_path / "classify" / "seeds.json").read_text())["seeds"] == [0, 1]


def _with_control(seed, ours, none, label=0.3):
    res = _results(seed, ours)
    res["models"] += [dict(_record("student_d8_label_none", top1=none), targets=[], seed=seed),
                      dict(_record("student_d8_label", top1=label), init="scratch", targets=[], seed=seed)]
    for m in res["models"]:
        m.update(epochs=2, val_metrics={"top1": m["metrics"]["top1"] + 0.01})
    return res


def test_each_distilled_student_is_paired_by_seed_with_its_control(tmp_path):
    """Ours − none per seed (issue #15's measure): the control shares network, start and epochs; the label-only
    student (another start) and a student of other epochs are not paired."""
    per_seed = {0: _with_control(0, 0.80, 0.72), 1: _with_control(1, 0.75, 0.76), 2: _with_control(2, 0.79, 0.73)}
    per_seed[2]["models"].append(dict(_record("student_d8_label_soft_long", top1=0.9), epochs=4, seed=2))
    rows = seeds.paired(per_seed, "top1", lower_is_better=False)
    assert [(r["student"], r["control"]) for r in rows] == [("student_d8_label_soft", "student_d8_label_none")]
    row = rows[0]
    assert row["test"] == pytest.approx({"0": 0.08, "1": -0.01, "2": 0.06})
    assert row["test_mean"] == pytest.approx(0.13 / 3) and row["test_std"] == pytest.approx(0.04725, abs=1e-5)
    assert row["val_mean"] == pytest.approx(0.13 / 3) and row["better"] == 2
    assert seeds.paired(per_seed, "top1", lower_is_better=True)[0]["better"] == 1
    text = seeds.write(str(tmp_path), "classify", per_seed)
    assert "| student_d8_label_soft | student_d8_label_none | +8.00 / -1.00 / +6.00 | **+4.33 ± 4.73** |" in text
    assert "2 of 3" in text
    assert json.loads((tmp_path / "classify" / "seeds.json").read_text())["paired"][0]["better"] == 2
    # Two controls of one key (an ambiguous pairing) give no row.
    per_seed[0]["models"].append(dict(_record("student_d8_label_other", top1=0.7), targets=[], epochs=2))
    assert [r["test"] for r in seeds.paired(per_seed, "top1", False)][0].keys() == {"1", "2"}


def test_share_teachers_copies_finished_teachers_only(tmp_path):
    src, dst = tmp_path / "seed0", tmp_path / "seed1"
    stages = src / "align" / "stages"
    stages.mkdir(parents=True)
    for name in ("teacher", "student_d8_pretrain"):
        (stages / f"{name}.weights.h5").write_bytes(b"w")
        (stages / f"{name}.json").write_text("{}")
    (stages / "teacher_softmax.weights.h5").write_bytes(b"unfinished: no record")
    assert seeds.share_teachers(str(src), str(dst), log=lambda _: None) == ["align/teacher"]
    assert sorted(p.name for p in (dst / "align" / "stages").iterdir()) == ["teacher.json", "teacher.weights.h5"]
    (dst / "align" / "stages" / "teacher.json").write_text('{"own": 1}')
    assert seeds.share_teachers(str(src), str(dst), log=lambda _: None) == []  # never overwrites
    assert json.loads((dst / "align" / "stages" / "teacher.json").read_text()) == {"own": 1}


def test_configs_put_each_seed_in_its_own_dir():
    cfg = Config(model_dir="runs/x", seeds=(0, 3))
    assert [(c.seed, c.model_dir) for c in seeds.configs(cfg)] == [(0, "runs/x/seed0"), (3, "runs/x/seed3")]
    assert seeds.configs(Config(seed=5)) == [Config(seed=5)]


def test_evaluate_needs_trained_models(tmp_path):
    with pytest.raises(StageError, match=r"results.json: no trained align models there"):
        evaluate.run(Config(task="align", model_dir=str(tmp_path), eval_data=str(tmp_path)), log=lambda _: None)


@pytest.mark.parametrize("task,meta,message", [
    ("align", {"has_landmarks": False, "num_classes": 3}, "no landmarks"),
    ("verify", {"has_landmarks": True, "num_classes": 1}, "verification needs identity labels"),
    ("classify", {"has_landmarks": False, "num_classes": 3, "test": 0}, "test split is empty"),
])
def test_evaluate_refuses_data_the_task_cannot_use(tmp_path, task, meta, message):
    data = tmp_path / "data"
    data.mkdir()
    test = meta.pop("test", 4)
    (data / "meta.json").write_text(json.dumps({"name": "d", "splits": {"train": 0, "test": test}, **meta}))
    if test:
        (data / "test-00000-of-00001.tfrecord").write_bytes(b"")
    res = results.Results(str(tmp_path / "runs" / task / "results.json"), _results(0, 0.4) | {"task": task})
    res.save()
    with pytest.raises(DataError, match=f"{data}: .*{message}"):
        evaluate.run(Config(task=task, model_dir=str(tmp_path / "runs"), eval_data=str(data)), log=lambda _: None)


@pytest.mark.parametrize("argv", [["--mode=evaluate"], ["--eval_data=x"], ["--seeds=0,0"], ["--seeds=a"]])
def test_bad_evaluate_and_seed_flags_are_refused(parse, argv):
    with pytest.raises(flags.IllegalFlagValueError):
        parse(*argv)


@pytest.mark.parametrize("cfg", sorted(p.name for p in (REPO / "configs").glob("table*.cfg")))
def test_every_table_config_parses(parse, cfg):
    c = parse(f"--flagfile={REPO / 'configs' / cfg}")
    assert c.seeds and c.model_dir == "runs/real" and c.image_size == 48 and c.data.startswith("data/real/")
    assert c.optimizer == "adamw" and c.landmark_head == "spatial"  # the quick preset's recipe
    assert c.pretrain_transfer_epochs == 0 and c.transfer_epochs == 3  # every student transfers 3 epochs
    assert (c.mining, c.lr_transfer) == (("semi_hard", 1e-3) if cfg == "table4_verify.cfg" else ("batch_hard", 6e-3))
    # real_sgd.cfg after it: the recipe of the tables measured before 2026-12-05, the table's own flags kept.
    old = parse(f"--flagfile={REPO / 'configs' / cfg}", f"--flagfile={REPO / 'configs' / 'real_sgd.cfg'}")
    assert (old.optimizer, old.lr_schedule, old.landmark_head, old.model_dir, old.mining, old.lr_transfer) == (
        "sgd", "step", "pooled", "runs/real_sgd", "batch_hard", 0.0)
    assert (old.transfer_epochs, old.pretrain_transfer_epochs) == (3, 0)
    assert (old.task, old.data, old.students, old.seeds, old.verify_softmax) == (
        c.task, c.data, c.students, c.seeds, c.verify_softmax)


def test_strong_teacher_config_trains_ours_and_its_control_beside_a_teacher_of_its_own(parse):
    """configs/strong_teacher.cfg (docs/recipe.md sections 18-20): a longer teacher than the quick preset's, so its
    own model_dir; Ours at τ = 8, α = τ², + K at β = 1, and its `none` control from the same label-only start,
    epochs and rate."""
    from keras_kd.tasks import TASKS
    cfg = parse(f"--flagfile={REPO / 'configs' / 'strong_teacher.cfg'}")
    assert cfg.task == "classify" and cfg.seeds == (0, 1, 2) and not flags.FLAGS.export
    quick = parse()
    assert cfg.teacher_epochs > quick.teacher_epochs and cfg.model_dir != quick.model_dir
    plan = {s.name: s for s in TASKS["classify"].plan(cfg)}
    ours, none = plan["student_d8_label_soft64_hidden"], plan["student_d8_label_none"]
    assert ours.targets == (("soft", 64.0), ("hidden", 1.0)) and none.targets == ()
    assert ours.teacher == ("classify", "teacher")
    assert ours.init_from == none.init_from == ("classify", "student_d8_label")
    assert (ours.epochs, ours.lr) == (none.epochs, none.lr) == (quick.student_epochs, 1e-2)
    assert plan["teacher"].epochs == 8 and cfg.temperature == 8.0 != quick.temperature
