"""results.json — the contract between training, export, benchmarks and docs — and results.md (plots.py draws
the figures).

results.json::

    {"task": a name of keras_kd.tasks.TASKS, "data": str, "preset": str, "seed": int, "updated": ISO time,
     "models": [ModelRecord, ...], ...any extra top-level keys}

A ModelRecord is a dict with the keys and types in ``MODEL_KEYS`` (plus any extra keys, e.g. ``softmax``,
``train_seconds``, ``epochs``, ``seed``, and ``val_metrics``: the same metrics on the val split carved from
the training data, by which the best student is chosen; ``metrics`` are the test split's).

The tables render what each Task declares (tasks/base.Task): its headline metric and direction, the units
of its metric names (fractions are shown as percent, percents as stored, anything else as stored), the
metric columns of the methods and teacher-cache tables, and its tables in the paper's shape.

Every file is written atomically (keras_kd.io) so a reader never sees half a file, even while a run is
still updating it.
"""
from __future__ import annotations

import functools
import json
import math
import numbers
import os
import re
from datetime import datetime, timezone
from typing import Any

from keras_kd import io

ROLES = ("teacher", "student")
TOP_KEYS: dict[str, type] = {"task": str, "data": str, "preset": str, "seed": numbers.Integral, "models": list}
MODEL_KEYS: dict[str, type] = {
    "name": str, "role": str, "width_divisor": numbers.Integral, "init": str, "targets": list,
    "alpha": numbers.Real, "beta": numbers.Real, "params": numbers.Integral, "flops": numbers.Integral,
    "metrics": dict,
}
NOTE = "last-epoch figures, not best-epoch"
DASH = "–"

# ---- the methods table: each distillation loss of distill/methods.py on the same footing ---------------
# Method rows are the students whose layers all start from a classification network (init "label": the
# label-only student; "distill": the distilled classification student), then train with the task loss + one
# distillation loss ("none": the task loss alone, the control). The table appears once a loss beyond the
# paper's soft/hidden terms has been run (the paper's own tables show those).
METHOD_INITS = ("label", "distill")
PAPER_TARGETS = {"soft", "hidden"}
METHODS_NOTE = ("each row: every layer initialized from a classification network (init label: the label-only "
                "student; distill: the distilled classification student), then the task loss + that "
                "distillation loss; none = the task loss alone")


def _type_ok(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)  # JSON true is not a number


def validate(results: dict) -> None:
    """Raise ValueError naming the model (or 'results') and the bad key, so a broken writer is found fast."""
    for key, kind in TOP_KEYS.items():
        if not _type_ok(results.get(key), kind):
            raise ValueError(f"results: key {key!r} missing or not {_kind_name(kind)}: {results.get(key)!r}")
    if results["task"] not in _tasks():
        raise ValueError(f"results: key 'task' must be one of {tuple(_tasks())}, got {results['task']!r}")
    names = set()
    for i, m in enumerate(results["models"]):
        name = m.get("name", f"#{i}") if isinstance(m, dict) else f"#{i}"
        if not isinstance(m, dict):
            raise ValueError(f"model {name!r}: record is not a dict")
        for key, kind in MODEL_KEYS.items():
            if not _type_ok(m.get(key), kind):
                raise ValueError(f"model {name!r}: key {key!r} missing or not {_kind_name(kind)}: {m.get(key)!r}")
        checks = {
            "role": m["role"] in ROLES,
            "width_divisor": m["width_divisor"] >= 1,
            "targets": all(isinstance(t, str) for t in m["targets"]),
            "metrics": all(isinstance(k, str) and _type_ok(v, numbers.Real) for k, v in m["metrics"].items()),
            "softmax": isinstance(m.get("softmax", False), bool),
            "name": name not in names,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"model {name!r}: bad value for key {key!r}: {m.get(key)!r}")
        names.add(name)


def _kind_name(kind: type) -> str:
    return {numbers.Integral: "an int", numbers.Real: "a number"}.get(kind, f"a {kind.__name__}")


class Results:
    """One results.json: load it (or start empty), upsert model records by name, save atomically."""

    def __init__(self, path: str, data: dict | None = None):
        self.path = path
        self.data: dict = data if data is not None else {"task": "", "data": "", "preset": "", "seed": 0,
                                                         "models": []}

    @classmethod
    def load(cls, path: str) -> "Results":
        """The results at ``path``; a missing file gives empty results (set task/data/preset/seed before saving)."""
        if not os.path.exists(path):
            return cls(path)
        with open(path, encoding="utf-8") as f:
            return cls(path, json.load(f))

    @property
    def models(self) -> list[dict]:
        return self.data.setdefault("models", [])

    def get(self, name: str) -> dict | None:
        return next((m for m in self.models if m.get("name") == name), None)

    def upsert(self, record: dict) -> None:
        """Replace the record with the same name in place (order kept), or append a new one."""
        if not isinstance(record.get("name"), str):
            raise ValueError(f"model record needs a string 'name', got {record.get('name')!r}")
        for i, m in enumerate(self.models):
            if m.get("name") == record["name"]:
                self.models[i] = dict(record)
                return
        self.models.append(dict(record))

    def save(self) -> None:
        """Validate, stamp ``updated`` and write results.json atomically."""
        validate(self.data)
        self.data["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        io.write_json(self.path, self.data, indent=2)


# ---------------------------------------------------------------------------------------------- markdown

def _tasks() -> dict:
    """The task registry (keras_kd.tasks.TASKS), imported when first needed: the tasks import this module."""
    from keras_kd.tasks import TASKS
    return TASKS


@functools.lru_cache(maxsize=None)
def _units() -> tuple[re.Pattern, re.Pattern]:
    """(fraction, percent) patterns of metric names, from every task's unit tokens."""
    def tokens(attr: str) -> re.Pattern:
        names = dict.fromkeys(n for t in _tasks().values() for n in getattr(t, attr))
        return re.compile(r"(^|_)(" + "|".join(map(re.escape, names)) + r")(_|$)")
    return tokens("fraction_metrics"), tokens("percent_metrics")


def format_metric(name: str, value: float | None) -> str:
    """Fractions as percent with 2 decimals, percent metrics with 2 decimals, others with 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    fraction, percent = _units()
    if fraction.search(name):
        return f"{100.0 * value:.2f}"
    if percent.search(name):
        return f"{value:.2f}"
    return f"{value:.4g}"


def percent_scale(name: str) -> float:
    """What a metric's stored value is multiplied by to show it as percent: 100 for a fraction, else 1."""
    return 100.0 if _units()[0].search(name) else 1.0


def metric_header(name: str) -> str:
    """A metric's column header: its name, with "(%)" when it is shown as percent."""
    return f"{name} (%)" if any(p.search(name) for p in _units()) else name


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(r) + " |" for r in rows]


def find(models: list[dict], **want: Any) -> dict | None:
    """First model matching every key (``targets`` order-insensitive); the full table lists every model."""
    for m in models:
        if all((sorted(m.get(k) or []) == sorted(v)) if k == "targets" else m.get(k) == v for k, v in want.items()):
            return m
    return None


def cell(model: dict | None, metric: str) -> str:
    """The metric; "mean ± std" for a record aggregated over seeds (it carries ``metrics_std``)."""
    if not model:
        return DASH
    text = format_metric(metric, model["metrics"].get(metric))
    std = (model.get("metrics_std") or {}).get(metric)
    if std is not None and text != DASH:
        text += f" ± {format_metric(metric, std)}"
    return text


def teacher_of(models: list[dict], softmax: bool | None = None) -> dict | None:
    """The teacher trained with the given softmax setting if there is one, else the first teacher."""
    teachers = [m for m in models if m.get("role") == "teacher"]
    match = [m for m in teachers if softmax is not None and bool(m.get("softmax", False)) == softmax]
    return (match or teachers or [None])[0]


def _students(models: list[dict]) -> list[dict]:
    return [m for m in models if m.get("role") == "student"]


def _resnet(models: list[dict]) -> list[dict]:
    """The paper's networks (ResNet-50/d); records written before other architectures have no "arch"."""
    return [m for m in models if m.get("arch", "resnet50") == "resnet50"]


def paper_students(models: list[dict]) -> list[dict]:
    """ResNet students trained with the paper's terms only (the α:β tables; other losses go to the methods
    table, other architectures to the side-by-side table)."""
    return [m for m in _resnet(_students(models)) if set(m.get("targets") or []) <= PAPER_TARGETS]


def widths(models: list[dict]) -> list[int]:
    """The width divisors of the ResNet students, ascending: the columns of the paper's tables."""
    return sorted({m["width_divisor"] for m in _resnet(_students(models))})


def network_of(model: dict) -> str:
    """Which network a record is, as its stage names say: "d8" (ResNet-50/8), "mbf", "mv3s_x0p5"."""
    return model.get("network") or f"d{model['width_divisor']}"


def network_label(model: dict) -> str:
    """"/8" for ResNet-50/8 (the paper's notation), the architecture tag otherwise."""
    net = network_of(model)
    return f"/{net[1:]}" if re.fullmatch(r"d\d+", net) else net


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and value == value


def best_students(models: list[dict], metric: str, lower_is_better: bool | None = None) -> tuple[list[str], str]:
    """(names of the best student of each network (ResNet width or architecture), the split that chose
    them: 'val' or 'test').

    Chosen by ``val_metrics``, so that the test split only measures; by the test ``metrics`` only when some
    student has no val figure (a run with --val_fraction=0, records written before the val split existed),
    and the caller says so. ``lower_is_better`` defaults to the direction of the task whose headline
    ``metric`` is.
    """
    if lower_is_better is None:
        ranks = {t.headline: t.lower_is_better for t in _tasks().values()}
        if metric not in ranks:
            raise ValueError(f"no task ranks models by {metric!r}: say whether lower is better")
        lower_is_better = ranks[metric]
    cands = [m for m in models if m.get("role") == "student" and _finite(m.get("metrics", {}).get(metric))]
    by = "val" if cands and all(_finite((m.get("val_metrics") or {}).get(metric)) for m in cands) else "test"
    best: dict[str, tuple] = {}
    for m in cands:
        value = (m["val_metrics"] if by == "val" else m["metrics"])[metric]
        key = value if lower_is_better else -value
        d = network_of(m)
        if d not in best or key < best[d][0]:
            best[d] = (key, m["name"])
    return [name for _, name in sorted(best.values(), key=lambda kv: kv[1])], by


def _best_line(metric: str, best: tuple, models: list[dict]) -> list[str]:
    """Which student of each network (ResNet width or architecture) is the best (``best``: best_students'
    answer), and on which split that was decided."""
    names, by = best
    if not names:
        return []
    by_name = {m["name"]: m for m in models}
    shown = ", ".join(f"{network_label(by_name[n])} {n} (val {val_cell(by_name[n], metric)}, "
                      f"test {cell(by_name[n], metric)})" for n in names)
    how = (f"by validation {metric}, the val split held out of the training data; the test split only measures"
           if by == "val" else f"by TEST {metric}: these records have no validation metrics (--val_fraction=0, "
           "or trained before the val split existed), so the choice has seen the test split")
    return [f"- best student ({how}): {shown}", ""]


def val_cell(model: dict | None, metric: str) -> str:
    """The val split's figure of a record (mean ± std over seeds when aggregated)."""
    if not model or not model.get("val_metrics"):
        return DASH
    return cell({"metrics": model["val_metrics"], "metrics_std": model.get("val_metrics_std")}, metric)


def has_metric(models: list[dict], metric: str) -> bool:
    return any(metric in m.get("metrics", {}) for m in models)


def per_model_table(title: str, models: list[dict], metric_names: list[str]) -> list[str]:
    """Test metrics per model, and the headline (the first) on the val split when any record has it."""
    val = metric_names[0] if any(m.get("val_metrics") for m in models) else None
    rows = [[m["name"]] + [cell(m, k) for k in metric_names] + ([val_cell(m, val)] if val else [])
            for m in models]
    header = ["model"] + [metric_header(k) for k in metric_names] + ([f"val {metric_header(val)}"] if val else [])
    return ["", f"## {title}", ""] + table(header, rows)


def method_of(model: dict) -> str:
    """The record's distillation loss by name ('soft', 'dkd', 'soft_at'); derived from ``targets`` for
    records written before ``method`` was stored."""
    return model.get("method") or "_".join(model.get("targets") or []) or "none"


def _method_rows(models: list[dict]) -> list[dict]:
    rows = [m for m in _students(models) if m.get("init") in METHOD_INITS]
    return rows if any(set(m.get("targets") or []) - PAPER_TARGETS for m in rows) else []


def _methods_tables(task, models: list[dict]) -> list[str]:
    rows, metric_names = _method_rows(models), list(task.table_metrics) if task else []
    teachers = [m for m in models if m.get("role") == "teacher"]
    out: list[str] = []
    for net in sorted({network_of(m) for m in rows}):
        label = network_label({"network": net})
        out += ["", f"## Distillation methods, student {label}", "", f"{METHODS_NOTE}.", ""]
        out += table(["method", "model", "init"] + [metric_header(k) for k in metric_names],
                     [[method_of(m) if m in rows else "(teacher)", m["name"], m["init"]]
                      + [cell(m, k) for k in metric_names]
                      for m in [r for r in rows if network_of(r) == net] + teachers])
    return out


def methods_markdown(by_task: dict[str, dict]) -> str:
    """One table per student width across tasks: a row per method, a column per task (and verification
    variant) with its headline metric. ``by_task``: task → its results.json. '' when no method ran."""
    columns: dict[tuple, str] = {}
    cells: dict[tuple, dict] = {}
    first = {name: (t.table_metrics or ("",))[0] for name, t in _tasks().items()}
    for task, metric in first.items():
        for m in _method_rows(by_task.get(task, {}).get("models", [])):
            variant = " (+softmax)" if m.get("softmax") else ""
            columns.setdefault((task, variant), f"{task} {metric_header(metric)}{variant}")
            cells.setdefault((network_of(m), method_of(m), task, variant), m)
    if not cells:
        return ""
    lines = ["# keras-kd: distillation methods", "", f"- note: {NOTE}; {METHODS_NOTE}", ""]
    for d in sorted({k[0] for k in cells}):
        methods = list(dict.fromkeys(k[1] for k in cells if k[0] == d))
        rows = []
        for method in methods:
            rows.append([method] + [cell(cells.get((d, method, t, v)), first[t]) for t, v in columns])
        teachers = [cell(teacher_of(by_task[t].get("models", []), bool(v)), first[t]) for t, v in columns]
        lines += [f"## Student {network_label({'network': d})}", ""] + table(["method"] + list(columns.values()),
                                                  rows + [["(teacher)"] + teachers]) + [""]
    return "\n".join(lines)


def write_methods(model_dir: str) -> str:
    """Writes ``model_dir/methods.md`` from every task's results.json there (when a method ran); returns it."""
    by_task = {}
    for task in _tasks():
        path = os.path.join(model_dir, task, "results.json")
        if os.path.exists(path):
            by_task[task] = Results.load(path).data
    text = methods_markdown(by_task)
    if text:
        io.write_text(os.path.join(model_dir, "methods.md"), text)
    return text


def _full_table(models: list[dict]) -> list[str]:
    metric_names = list(dict.fromkeys(k for m in models for k in m.get("metrics", {})))
    extras = list(dict.fromkeys(k for m in models for k, v in m.items()
                                if k not in MODEL_KEYS and k not in ("network", "width")
                                and isinstance(v, (str, numbers.Real))))
    header = ["name", "role", "network", "init", "targets", "α", "β", "params (M)", "FLOPs (G)"] + \
             [metric_header(k) for k in metric_names] + extras
    rows = []
    for m in models:
        rows.append([m["name"], m["role"], network_label(m), m["init"], ",".join(m["targets"]) or DASH,
                     f"{m['alpha']:g}", f"{m['beta']:g}", f"{m['params'] / 1e6:.3f}", f"{m['flops'] / 1e9:.3f}"]
                    + [cell(m, k) for k in metric_names]
                    + [DASH if m.get(k) is None else (f"{m[k]:.4g}" if isinstance(m[k], float) else str(m[k]))
                       for k in extras])
    return ["", "## All models", ""] + table(header, rows)


def _networks_table(metric: str, names: list[str], models: list[dict]) -> list[str]:
    """The best student of each network (``names``) side by side, when the run has students of several
    architectures: headline metric, size and cost, and the int8 TFLite file's size and latency where it was
    exported."""
    by_name = {m["name"]: m for m in models}
    best = [by_name[n] for n in names]
    if len({m.get("arch", "resnet50") for m in best}) < 2:
        return []
    rows = []
    for m in best:
        int8 = (m.get("export") or {}).get("tflite_int8") or {}
        rows.append([network_label(m), m["name"], cell(m, metric), val_cell(m, metric),
                     f"{m['params'] / 1e6:.3f}", f"{m['flops'] / 1e6:.1f}",
                     f"{int8['size_bytes'] / 1024:.0f}" if "size_bytes" in int8 else DASH,
                     f"{int8['latency_ms']:.2f}" if "latency_ms" in int8 else DASH])
    return ["", f"## Students side by side: the best of each network (by validation {metric_header(metric)})", "",
            "int8: the exported int8 TFLite file, latency of one image in LiteRT with 1 thread (– where the "
            "student was not exported).", ""] + table(
        ["network", "best student", metric_header(metric), f"val {metric_header(metric)}", "params (M)",
         "MFLOPs", "int8 size (kB)", "int8 latency (ms)"], rows) + [""]


def _export_table(models: list[dict]) -> list[str]:
    """Each exported student's files: size and the task metric measured on the file, beside Keras's.

    The SavedModel is checked output by output against Keras instead; its row shows the largest difference.
    """
    rows = []
    for m in models:
        exp = m.get("export") or {}
        keras_metrics = exp.get("keras", {})
        metric = next(iter(keras_metrics), "")
        for fmt, entry in exp.items():  # the record's exported files (export.FORMATS), in its order
            if not isinstance(entry, dict) or "size_bytes" not in entry:
                continue
            on_file = (format_metric(metric, entry[metric]) if metric in entry
                       else f"max abs diff {entry.get('max_abs_diff', float('nan')):.1e}")
            rows.append([m["name"], fmt, f"{entry.get('size_bytes', 0) / 1024:.0f}", on_file,
                         format_metric(metric, keras_metrics.get(metric))])
    if not rows:
        return []
    return ["## Exported students (task metric on the test split, measured on each file)", ""] + table(
        ["model", "format", "size (kB)", "the file", "Keras model"], rows) + [""]


def _teacher_cache_table(task, models: list[dict]) -> list[str]:
    """Each student trained on cached teacher outputs (NAME_tc) beside its online twin NAME, when both exist."""
    from keras_kd.distill.teacher_cache import SUFFIX
    by_name = {m["name"]: m for m in models}
    pairs = [(by_name[m["name"][:-len(SUFFIX)]], m) for m in models
             if m.get("teacher_cache") and m["name"].endswith(SUFFIX) and m["name"][:-len(SUFFIX)] in by_name]
    if not pairs:
        return []
    keys = [k for k in (task.cache_metrics if task else ()) if any(k in m["metrics"] for pair in pairs for m in pair)]
    rows = []
    for online, cached in pairs:
        secs = [m.get("train_seconds") for m in (online, cached)]
        ratio = f"{secs[1] / secs[0]:.2f}" if all(isinstance(v, numbers.Real) and v > 0 for v in secs) else DASH
        rows.append([online["name"]] + [f"{cell(online, k)} / {cell(cached, k)}" for k in keys] + [ratio])
    return ["## Teacher cache: online teacher / cached teacher outputs (--teacher_cache)", "",
            "Cached outputs are the teacher's on the un-augmented centre crop; the student still trains on "
            "augmented crops. Same teacher and seed; each pair starts from the same network, except that a *_tc "
            "student starting from a distilled one starts from its cached twin. Train time is `fit` alone: the "
            "one-off teacher pass that fills the cache is logged, not counted.", ""] + table(
        ["student"] + [f"{metric_header(k)} online / cached" for k in keys] + ["train time cached ÷ online"],
        rows) + [""]


def write_markdown(results: dict, path: str) -> str:
    """Write results.md with the tables of ``results['task']`` (its Task's paper tables first); returns the
    markdown."""
    models = results.get("models", [])
    name = results.get("task", "")
    task = _tasks().get(name)
    lines = [f"# keras-kd results: {name}", "",
             f"- task: {name}", f"- data: {results.get('data', '')}", f"- preset: {results.get('preset', '')}",
             f"- seed: {results.get('seed', '')}", f"- updated: {results.get('updated', '')}", f"- note: {NOTE}",
             ""]
    if results.get("eval_data") and any(m.get("val_metrics") for m in models):
        lines += [f"- val: the validation split of the training data ({results.get('trained_on', '')}), which "
                  "chose the best student when it was trained; the other figures are on this data's test split", ""]
    metric = task.headline if task else ""
    best = best_students(models, metric, task.lower_is_better) if metric else ([], "")
    lines += _best_line(metric, best, models)
    lines += task.tables(models) if task else []
    lines += _methods_tables(task, models)
    lines += _networks_table(metric, best[0], models)
    lines += _export_table(models)
    lines += _teacher_cache_table(task, models)
    lines += _full_table(models)
    text = "\n".join(lines) + "\n"
    io.write_text(path, text)
    return text
