"""Several seeds of one experiment, and their mean ± std: is a reported gain more than noise?

    python main.py --task=align --seeds=0,1,2 --model_dir=runs/real

trains seed N into `runs/real/seed<N>/` (an ordinary model_dir: reused, resumed, evaluated like any), then
writes `runs/real/<task>/seeds.json` and `seeds.md`: every model's metrics as mean ± sample std over the
seeds it finished in (every `seed<N>` run of the task there, not only this command's), in the paper-shape
tables of `results.md`.

Teachers are shared (`--share_teacher`, the default): the first seed trains every teacher stage and the
later seeds start from a copy of it, so the seeds vary what a user of a given teacher controls, the
students' initialization and data order, and the teacher is paid for once.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List

import numpy as np

from keras_kd import io, results
from keras_kd.config import Config
from keras_kd.tasks import TASKS

TEACHER_PREFIX = "teacher"
STAGE_FILES = (".weights.h5", ".eval.npz", ".json")  # the record last: it vouches for the rest


def seed_dir(model_dir: str, seed: int) -> str:
    return os.path.join(model_dir, f"seed{seed}")


def configs(cfg: Config) -> List[Config]:
    """One Config per run: cfg itself without --seeds, else one per seed in its own model_dir."""
    if not cfg.seeds:
        return [cfg]
    return [cfg.replace(seed=s, model_dir=seed_dir(cfg.model_dir, s)) for s in cfg.seeds]


def finished(model_dir: str, task: str) -> Dict[int, dict]:
    """The results.json of every seed<N> run of the task under model_dir, by seed: what seeds.md sums up,
    so a later one-seed command (say, Table 4 after Table 5) adds to the table instead of replacing it."""
    out = {}
    for d in sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []:
        path = os.path.join(model_dir, d, task, "results.json")
        if d.startswith("seed") and d[4:].isdigit() and os.path.exists(path):
            out[int(d[4:])] = results.Results.load(path).data
    return out


def share_teachers(src_dir: str, dst_dir: str, log: Callable[[str], None] = print) -> List[str]:
    """Copies every finished teacher stage of `src_dir` that `dst_dir` lacks; returns them as task/name."""
    copied = []
    for task in sorted(os.listdir(src_dir)) if os.path.isdir(src_dir) else []:
        stages = os.path.join(src_dir, task, "stages")
        if not os.path.isdir(stages):
            continue
        for name in sorted(f[:-5] for f in os.listdir(stages) if f.endswith(".json")
                           and f.startswith(TEACHER_PREFIX) and ".partial" not in f):
            dst = os.path.join(dst_dir, task, "stages")
            if os.path.exists(os.path.join(dst, name + ".json")):
                continue
            os.makedirs(dst, exist_ok=True)
            for suffix in STAGE_FILES:
                src = os.path.join(stages, name + suffix)
                if os.path.exists(src):
                    io.copy_file(src, os.path.join(dst, name + suffix))
            copied.append(f"{task}/{name}")
    if copied:
        log(f"[seeds] {dst_dir}: sharing the teacher stages of {src_dir}: {', '.join(copied)}")
    return copied


def aggregate(per_seed: Dict[int, dict]) -> dict:
    """Results of several seeds → one results dict: each model's metrics are the mean over the seeds it
    appears in, with ``metrics_std`` (sample std, ddof=1; none from one seed), ``seeds`` and ``n_seeds``."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    names = list(dict.fromkeys(m["name"] for s in seeds for m in per_seed[s]["models"]))
    models = []
    for name in names:
        recs = {s: m for s in seeds for m in per_seed[s]["models"] if m["name"] == name}
        base = dict(next(iter(recs.values())))
        for field in ("metrics", "val_metrics"):
            keys = list(dict.fromkeys(k for m in recs.values() for k in m.get(field) or {}))
            if not keys:
                continue
            values = {k: [m[field][k] for m in recs.values() if k in (m.get(field) or {})] for k in keys}
            base[field] = {k: float(np.mean(v)) for k, v in values.items()}
            # No std from one value (a model that only some seeds have, e.g. a one-seed table added later).
            base[f"{field}_std"] = {k: float(np.std(v, ddof=1)) for k, v in values.items() if len(v) > 1}
        base["seeds"] = sorted(recs)
        base["n_seeds"] = len(recs)
        base["trained_with_seeds"] = sorted({m.get("seed", s) for s, m in recs.items()})  # one: a shared teacher
        base.pop("seed", None)
        for k in ("train_seconds",):
            if all(isinstance(m.get(k), (int, float)) for m in recs.values()):
                base[k] = round(float(np.mean([m[k] for m in recs.values()])), 1)
        models.append(base)
    return {"task": first["task"], "data": first["data"], "preset": first.get("preset", ""), "seed": seeds[0],
            "seeds": seeds, "models": models}


def _control_key(m: dict) -> tuple:
    """What a student shares with its control: network, start and epochs (and the softmax head)."""
    return results.network_of(m), m.get("init"), m.get("epochs"), bool(m.get("softmax", False))


def paired(per_seed: Dict[int, dict], metric: str, lower_is_better: bool) -> List[dict]:
    """Each student trained with teacher targets minus its control, seed by seed.

    The control is the student of the same network, start and epochs with no teacher targets (`--methods=none`,
    or α = β = 0): the difference is what the teacher gave, not the extra epochs. Paired by seed, because the
    seeds move both alike (the spread of each mean hides it). ``better``: seeds where the student beat it."""
    rows: Dict[tuple, dict] = {}
    for s in sorted(per_seed):
        students = [m for m in per_seed[s]["models"] if m.get("role") == "student" and metric in m.get("metrics", {})]
        controls: Dict[tuple, List[dict]] = {}
        for m in students:
            if not m.get("targets"):
                controls.setdefault(_control_key(m), []).append(m)
        for m in students:
            ctrl = controls.get(_control_key(m), [])
            if not m.get("targets") or len(ctrl) != 1:
                continue
            c = ctrl[0]
            row = rows.setdefault((m["name"], c["name"]), {"student": m["name"], "control": c["name"],
                                                            "metric": metric, "test": {}, "val": {}})
            row["test"][str(s)] = float(m["metrics"][metric] - c["metrics"][metric])
            if metric in (m.get("val_metrics") or {}) and metric in (c.get("val_metrics") or {}):
                row["val"][str(s)] = float(m["val_metrics"][metric] - c["val_metrics"][metric])
    for row in rows.values():
        for split in ("test", "val"):
            v = list(row[split].values())
            row[f"{split}_mean"] = float(np.mean(v)) if v else None
            row[f"{split}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else None
        row["better"] = sum((d < 0) if lower_is_better else (d > 0) for d in row["test"].values())
    return list(rows.values())


def paired_markdown(rows: List[dict], lower_is_better: bool) -> str:
    if not rows:
        return ""
    metric = rows[0]["metric"]
    scale = results.percent_scale(metric)

    def pm(mean, std):
        return "–" if mean is None else f"{scale * mean:+.2f}" + ("" if std is None else f" ± {scale * std:.2f}")
    body = [[r["student"], r["control"], " / ".join(f"{scale * d:+.2f}" for d in r["test"].values()),
             f"**{pm(r['test_mean'], r['test_std'])}**", pm(r["val_mean"], r["val_std"]),
             f"{r['better']} of {len(r['test'])}"] for r in rows]
    head = ["student", "control", "per seed", "mean ± std", "val mean ± std", "better in"]
    return "\n".join(["", f"## Paired by seed: {results.metric_header(metric)}, student − its control", "",
                      "The control: the same network, start and epochs without teacher targets (`--methods=none`, "
                      f"or α = β = 0). {'Lower' if lower_is_better else 'Higher'} is better."]
                     + [""] + results.table(head, body)) + "\n"


def write(model_dir: str, task: str, per_seed: Dict[int, dict], stem: str = "seeds",
          title: str = "") -> str:
    """Writes `<model_dir>/<task>/<stem>.json|md` (mean ± std over seeds, and each distilled student paired
    with its control); returns the markdown."""
    agg = aggregate(per_seed)
    spec = TASKS[task]
    agg["paired"] = paired(per_seed, spec.headline, spec.lower_is_better)
    out = os.path.join(model_dir, task)
    res = results.Results(os.path.join(out, f"{stem}.json"), agg)
    res.save()
    md_path = os.path.join(out, f"{stem}.md")
    text = results.write_markdown(res.data, md_path)
    n = len(per_seed)
    teacher_note = ("teachers shared: trained once with the first seed" if any(
        m.get("role") == "teacher" and m["n_seeds"] > 1 and len(m["trained_with_seeds"]) == 1
        for m in agg["models"]) else "")
    head = (f"# {title or task}: mean ± std over {n} seed(s) {', '.join(map(str, sorted(per_seed)))}"
            + (f" ({teacher_note})" if teacher_note else "") + "\n\n"
            "Each cell is the mean ± sample std (ddof 1) over the seeds; per seed: "
            + ", ".join(f"{os.path.join(model_dir, f'seed{s}', task)}/" for s in sorted(per_seed)) + "\n\n")
    text = head + text + paired_markdown(agg["paired"], spec.lower_is_better)
    io.write_text(md_path, text)
    return text
