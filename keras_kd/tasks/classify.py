"""Face classification (the paper's Section 3, Tables 1-2): teacher, label-only, Scratch, FitNet, Ours,
and one student per --methods spec, distilled from the label-only student as Ours is."""
from __future__ import annotations

import numpy as np

from keras_kd import metrics, results
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.distill import losses, methods
from keras_kd.keras import tf
from keras_kd.models import archs
from keras_kd.tasks import verification
from keras_kd.tasks.base import Stage, Task, predict, students, unique_stages


class Classify(Task):
    name = "classify"
    headline = "top1"
    uses_cls_data = True
    fraction_metrics = Task.fraction_metrics + ("top1", "top5", "pair_acc")
    table_metrics = cache_metrics = ("top1", "pair_acc")
    labels = {"top1": "top-1 %", "pair_acc": "pair acc %"}
    model_output_keys = ("logits",)
    serving_output_names = ("probabilities", "class_id")

    def task_loss(self, stage: Stage, cfg: Config):
        return lambda y, s: losses.label_ce(y["label"], s["logits"])

    def plan(self, cfg: Config) -> list:
        c = self.name
        stages = [Stage(c, "teacher", 1, "scratch", cfg.teacher_epochs, cfg.lr_scratch)]
        soft = (("soft", cfg.alpha),)
        method_terms = self.method_terms(cfg)
        for st in students(cfg):
            d, kw = st.width_divisor, st.build
            label = Stage(c, f"student_{st.tag}_label", d, "scratch", cfg.student_epochs, cfg.lr_scratch, **kw)
            stages.append(label)
            teacher = (c, "teacher")
            if "scratch" in cfg.cls_inits:
                stages += [Stage(c, f"student_{st.tag}_scratch_{t}", d, "scratch", cfg.student_epochs,
                                 cfg.lr_scratch, teacher=teacher, targets=((t, cfg.alpha),), **kw)
                           for t in cfg.scratch_targets]
            if "fitnet" in cfg.cls_inits:
                # FitNet: regress the teacher's mid-layer first (only the layers below the hint learn),
                # then KD with the scratch learning rate, since the deeper layers are still random.
                hint = Stage(c, f"student_{st.tag}_fitnet_hint", d, "scratch", cfg.fitnet_epochs, cfg.lr_scratch,
                             teacher=teacher, targets=(("hint", 1.0),), task_loss=False, evaluate=False, **kw)
                stages += [hint, Stage(c, f"student_{st.tag}_fitnet_soft", d, "fitnet", cfg.student_epochs,
                                       cfg.lr_scratch, init_from=(c, hint.name), teacher=teacher, targets=soft,
                                       **kw)]
            if "label" in cfg.cls_inits:
                stages.append(Stage(c, distilled_name(st.tag, cfg), d, "label", cfg.student_epochs, cfg.lr_init,
                                    init_from=(c, label.name), teacher=teacher, targets=ours_targets(cfg), **kw))
            # The methods table: each loss on the same footing as Ours (label-only init, same epochs).
            for terms in method_terms:
                stages.append(Stage(c, f"student_{st.tag}_label_{methods.spec_name(terms)}", d, "label",
                                    cfg.student_epochs, cfg.lr_init, init_from=(c, label.name),
                                    teacher=teacher if terms else None, targets=tuple(terms), **kw))
            if "select" in cfg.cls_inits and select_skip_reason(st.arch, cfg) is None:
                # Weight selection: the label-only stage starts from every k-th channel of the teacher's
                # weights; then the paper's soft targets (init "selected"), and with `none` its control.
                sel = Stage(c, f"student_{st.tag}_select", d, "select", cfg.student_epochs, cfg.lr_scratch,
                            init_from=teacher, **kw)
                stages += [sel, Stage(c, f"student_{st.tag}_select_soft", d, "selected", cfg.student_epochs,
                                      cfg.lr_init, init_from=(c, sel.name), teacher=teacher, targets=soft, **kw)]
                if any(not terms for terms in method_terms):  # --methods=none: the task loss alone
                    stages.append(Stage(c, f"student_{st.tag}_select_none", d, "selected", cfg.student_epochs,
                                        cfg.lr_init, init_from=(c, sel.name), **kw))
        return unique_stages(stages)

    def skipped(self, cfg: Config) -> list:
        return super().skipped(cfg) + select_skipped(cfg, "--cls_inits", cfg.cls_inits)

    def eval_metrics(self, stage):
        def top1(y, s):
            hit = tf.equal(tf.argmax(s["logits"], axis=-1, output_type=tf.int32), tf.cast(y["label"], tf.int32))
            return tf.cast(hit, tf.float32), tf.ones_like(hit, tf.float32)
        return {"top1": top1}

    def metrics(self, outputs, targets):
        """Top-1 of the logits, or of the probabilities an exported file outputs (the same arg-max)."""
        scores = outputs["logits"] if "logits" in outputs else outputs["probabilities"]
        return {"top1": metrics.top1(scores, targets["label"])}

    def evaluate(self, model, data_dir, cfg, split="test"):
        ds = pipeline.make_dataset(data_dir, split, self.batch_config(cfg, False), training=False)
        out, tgt = predict(model, ds, ["logits", "hidden"])
        result = self.metrics(out, tgt)
        # The paper's second figure (LFW accuracy): 10-fold pair accuracy on the hidden layer K.
        pair_metrics, _ = verification.pair_metrics(out["hidden"], tgt, data_dir, cfg.seed, every_pair=False)
        result.update({k: v for k, v in pair_metrics.items() if k == "pair_acc"})
        return result, {}

    def serving_outputs(self, raw, size, offset, to_input):
        return {"probabilities": tf.nn.softmax(raw["logits"], axis=-1),
                "class_id": tf.argmax(raw["logits"], axis=-1, output_type=tf.int32)}

    def expected_serving_outputs(self, raw, image_size, input_hw=None):
        return {"probabilities": _softmax(raw["logits"]),
                "class_id": np.argmax(raw["logits"].astype(np.float64), axis=-1).astype(np.int32)}

    def model_unit_outputs(self, raw):
        return {"probabilities": _softmax(raw["logits"])}

    def allowed_mismatches(self, raw, tolerance):
        """A class id may flip only where the two best logits tie within the tolerance."""
        top2 = np.sort(raw["logits"], axis=-1)[:, -2:]
        return int(np.sum(top2[:, 1] - top2[:, 0] <= tolerance))

    def prediction_row(self, outputs, i):
        return {"class_id": int(outputs["class_id"][i]), "probability": float(outputs["probabilities"][i].max())}

    def csv_fields(self, row):
        return {"class_id": row["class_id"], "probability": row["probability"]}

    def tables(self, models):
        """Table 2 (top-1, and pair accuracy when measured, per init and width) and Table 1 (targets
        from scratch) when a hidden- or logits-only student ran."""
        widths, teacher, cell = results.widths(models), results.teacher_of(models), results.cell

        def student(d, init, targets):
            return results.find(models, role="student", width_divisor=d, init=init, targets=targets)
        rows_spec = [("Label only", "scratch", []), ("Scratch", "scratch", ["soft"]), ("FitNet", "fitnet", ["soft"]),
                     ("Ours (all layers initialized)", "label", ["soft"])]
        if results.find(models, role="student", init="select"):
            rows_spec += [("Selected from the teacher (labels)", "select", []),
                          ("Selected, + labels (none)", "selected", []),
                          ("Selected, + soft", "selected", ["soft"])]
        blocks = [("top1", "top-1")] + ([("pair_acc", "pair acc")] if results.has_metric(models, "pair_acc") else [])
        rows = []
        for metric, label in blocks:
            for i, (row, init, targets) in enumerate(rows_spec):
                t = cell(teacher, metric) if i == 0 else ""
                rows.append([label, row, t] + [cell(student(d, init, targets), metric) for d in widths])
        out = ["## Table 2 shape: classification (%, higher is better)", ""]
        out += results.table(["metric", "init", "teacher"] + [f"/{d}" for d in widths], rows)
        scratch_targets = [("Hidden", ["hidden"]), ("Logits", ["logits"]), ("Soft", ["soft"])]
        if any(results.find(models, role="student", init="scratch", targets=t) for _, t in scratch_targets[:2]):
            rows = [[row] + [cell(student(d, "scratch", t), "top1") for d in widths] for row, t in scratch_targets]
            out += ["", "## Table 1 shape (targets from scratch): top-1 %", ""]
            out += results.table(["target"] + [f"/{d}" for d in widths], rows)
        return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax in float64 (numpy): the probabilities the serving graph's are checked against."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)


def select_skip_reason(arch: str, cfg: Config):
    """Why a student cannot start from weights selected from the teacher, or None when it can."""
    if cfg.teacher or cfg.teacher_outputs:
        return "weights are selected from keras-kd's own ResNet-50 teacher, and this run brings its own teacher"
    if arch != archs.DEFAULT:
        return f"weights are selected from a teacher of the same layers, and the teacher is {archs.DEFAULT}, not {arch}"
    return None


def select_skipped(cfg: Config, flag: str, inits) -> list:
    """(flag, why) of each student that `select` among ``inits`` leaves out (the plan says so)."""
    if "select" not in inits:
        return []
    return [(f"{flag}=select for {st.tag}", why) for st in students(cfg) if (why := select_skip_reason(st.arch, cfg))]


def ours_targets(cfg: Config) -> tuple:
    """The loss of "Ours": --kd when given, else the paper's soft targets with weight α."""
    return tuple(methods.parse_kd(cfg.kd)) if cfg.kd else (("soft", cfg.alpha),)


def distilled_name(tag: str, cfg: Config) -> str:
    """The paper's "Ours" student (all layers initialized, then KD): what alignment/verification start from.

    student_<tag>_label_soft (tag: d8, mbf, ...) with the paper's loss (whatever α, as always); named after
    --kd when given.
    """
    return f"student_{tag}_label_{methods.spec_name(ours_targets(cfg)) if cfg.kd else 'soft'}"
