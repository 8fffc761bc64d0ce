"""Prints the real-face tables of docs/results.md from a model_dir of --seeds runs (default runs/real).

    python configs/collect.py [runs/real]

Per table: mean ± sample std over the seeds, and the key comparisons as paired differences per seed
(the same seed's two students share initialization noise and data order, so the paired difference is
what says whether a gain is more than noise), with the number of seeds in which it held.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

PAPER = {
    "classify": {"teacher": 88.61, "student_d8_label": None, "student_d8_scratch_soft": 66.12,
                 "student_d8_fitnet_soft": 69.88, "student_d8_label_soft": 75.06,
                 "student_d8_scratch_hidden": 60.08, "student_d8_scratch_logits": 59.77},
    "align": {"teacher": 3.02, "student_d8_pretrain_a0b0": 3.36, "student_d8_pretrain_a0b1": 3.24,
              "student_d8_pretrain_a1b0": 3.60, "student_d8_distill_a0b0": 3.29,
              "student_d8_distill_a0b1": 3.21, "student_d8_distill_a1b0": 3.54},
    "verify": {"teacher_softmax": 74.16, "student_d8_pretrain_a0b0_softmax": 51.86,
               "student_d8_pretrain_a0b1_softmax": 51.43, "student_d8_pretrain_a1b0_softmax": 53.45,
               "student_d8_distill_a0b0_softmax": 57.66, "student_d8_distill_a0b1_softmax": 56.87,
               "student_d8_distill_a1b0_softmax": 57.78,
               "teacher": 73.81, "student_d8_pretrain_a0b0": 51.03, "student_d8_pretrain_a0b1": 49.19,
               "student_d8_pretrain_a1b0": 51.76, "student_d8_distill_a0b0": 56.69, "student_d8_distill_a0b1": 53.99,
               "student_d8_distill_a1b0": 56.52},
}
ROWS = {
    "classify": [("Teacher ResNet-50", "teacher"), ("Label only (not in the paper)", "student_d8_label"),
                 ("Scratch + Hidden (Table 1)", "student_d8_scratch_hidden"),
                 ("Scratch + Logits (Table 1)", "student_d8_scratch_logits"),
                 ("Scratch + Soft", "student_d8_scratch_soft"), ("FitNet + Soft", "student_d8_fitnet_soft"),
                 ("Ours (all layers initialized) + Soft", "student_d8_label_soft")],
    "align": [("Teacher", "teacher")] + [(f"{i.capitalize()} α={a},β={b}", f"student_d8_{i}_a{a}b{b}")
                                         for i in ("pretrain", "distill") for a, b in ((0, 0), (0, 1), (1, 0))],
    "verify": [("T5 (triplet + softmax): Teacher", "teacher_softmax")]
    + [(f"T5: {i.capitalize()} α={a},β={b}", f"student_d8_{i}_a{a}b{b}_softmax")
       for i in ("pretrain", "distill") for a, b in ((0, 0), (0, 1), (1, 0))]
    + [("T4 (triplet only): Teacher", "teacher")]
    + [(f"T4: {i.capitalize()} α={a},β={b}", f"student_d8_{i}_a{a}b{b}")
       for i in ("pretrain", "distill") for a, b in ((0, 0), (0, 1), (1, 0))],
}
METRICS = {"classify": [("top1", 100, "top-1 %"), ("pair_acc", 100, "pair acc %")],
           "align": [("nrmse", 1, "NRMSE %"), ("failure_rate", 1, "failure % (>10%)")],
           "verify": [("rank1", 100, "rank-1 %"), ("pair_acc", 100, "pair acc %")]}
PAIRS = {  # (better-claimed, worse-claimed, what), metric sign: +1 higher is better
    "classify": [("student_d8_label_soft", "student_d8_label", "Ours − label-only"),
                 ("student_d8_label_soft", "student_d8_fitnet_soft", "Ours − FitNet"),
                 ("student_d8_fitnet_soft", "student_d8_scratch_soft", "FitNet − Scratch"),
                 ("student_d8_scratch_soft", "student_d8_scratch_hidden", "Soft − Hidden (from scratch)"),
                 ("student_d8_scratch_soft", "student_d8_scratch_logits", "Soft − Logits (from scratch)")],
    "align": [(f"student_d8_distill_a{a}b{b}", f"student_d8_pretrain_a{a}b{b}", f"Distill − Pretrain at α={a},β={b}")
              for a, b in ((0, 0), (0, 1), (1, 0))]
    + [(f"student_d8_{i}_a0b1", f"student_d8_{i}_a0b0", f"{i.capitalize()}: hidden (β=1) − none") for i in ("pretrain", "distill")]
    + [(f"student_d8_{i}_a1b0", f"student_d8_{i}_a0b0", f"{i.capitalize()}: soft (α=1) − none") for i in ("pretrain", "distill")],
    "verify": [(f"student_d8_distill_a{a}b{b}_softmax", f"student_d8_pretrain_a{a}b{b}_softmax",
                f"Distill − Pretrain at α={a},β={b}") for a, b in ((0, 0), (0, 1), (1, 0))]
    + [(f"student_d8_{i}_a1b0_softmax", f"student_d8_{i}_a0b1_softmax", f"{i.capitalize()}: soft (α=1) − hidden (β=1)")
       for i in ("pretrain", "distill")]
    + [(f"student_d8_{i}_a{a}b{b}_softmax", f"student_d8_{i}_a{a}b{b}", f"{i.capitalize()} α={a},β={b}: + softmax − triplet only")
       for i in ("pretrain", "distill") for a, b in ((0, 0), (0, 1), (1, 0))],
}
LOWER_IS_BETTER = {"nrmse", "failure_rate"}


def _per_seed(model_dir: str, task: str) -> dict:
    out = {}
    for d in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, d, task, "results.json")
        if d.startswith("seed") and os.path.exists(path):
            with open(path) as f:
                out[int(d[4:])] = {m["name"]: m for m in json.load(f)["models"]}
    return out


def _fmt(values: list, scale: float) -> str:
    if not values:
        return "–"
    v = np.asarray(values) * scale
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def table(model_dir: str, task: str) -> str:
    runs = _per_seed(model_dir, task)
    if not runs:
        return f"(no {task} runs in {model_dir})\n"
    metrics = METRICS[task]
    head = ["model", "seeds"] + [label for _, _, label in metrics] + ["paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, name in ROWS[task]:
        recs = [r[name] for r in runs.values() if name in r]
        if name.startswith("teacher"):
            recs = recs[:1]  # shared by the seeds (--share_teacher): one network, one value
        if not recs:
            continue
        seeds = sorted({r.get("seed", 0) for r in recs}) if name.startswith("teacher") else sorted(
            s for s, r in runs.items() if name in r)
        cells = [_fmt([r["metrics"][k] for r in recs if k in r["metrics"]], scale) for k, scale, _ in metrics]
        paper = PAPER[task].get(name)
        lines.append("| " + " | ".join([label, ",".join(map(str, seeds))] + cells
                                       + ["–" if paper is None else f"{paper:.2f}"]) + " |")
    key, scale, label = metrics[0]
    sign = -1 if key in LOWER_IS_BETTER else 1
    lines += ["", f"Paired differences in {label} per seed (positive = the first is better):", "",
              "| comparison | per seed | mean ± std | better in |", "|---|---|---|---|"]
    for a, b, what in PAIRS[task]:
        diffs = [sign * scale * (r[a]["metrics"][key] - r[b]["metrics"][key]) for r in runs.values() if a in r and b in r]
        if diffs:
            per = ", ".join(f"{d:+.2f}" for d in diffs)
            ms = f"{np.mean(diffs):+.2f} ± {np.std(diffs, ddof=1):.2f}" if len(diffs) > 1 else f"{diffs[0]:+.2f}"
            lines.append(f"| {what} | {per} | {ms} | {sum(d > 0 for d in diffs)}/{len(diffs)} |")
    return "\n".join(lines) + "\n"


def widths(model_dir: str) -> str:
    runs = _per_seed(model_dir, "classify")
    r = runs.get(0, {})
    lines = ["| model | top-1 % | pair acc % | params (M) |", "|---|---|---|---|"]
    for name in ["teacher"] + [f"student_d{d}_{k}" for d in (2, 4, 8) for k in ("label", "label_soft")]:
        if name in r:
            m = r[name]
            lines.append(f"| {name} | {100 * m['metrics']['top1']:.2f} | {100 * m['metrics'].get('pair_acc', float('nan')):.2f}"
                         f" | {m['params'] / 1e6:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "runs/real"
    for task in ROWS:  # the tables this script lays out, one per task
        print(f"## {task}\n\n{table(root, task)}")
    print(f"## widths (seed 0)\n\n{widths(root)}")
