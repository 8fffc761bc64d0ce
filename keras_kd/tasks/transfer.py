"""What alignment and verification share: the paper's transfer experiment (Section 4).

Teacher from the classification teacher; students "Pretrain" (trained on the task alone first, from
scratch — our reading of the paper's task-specific initialization) and "Distill" (from the distilled
classification student), each trained with Eq. 5: task loss + α·soft targets + β·‖K_S − K_T‖².
With --transfer_inits=select, students "Selected" start from every k-th channel of the task's trained
teacher (weight selection, as --cls_inits=select does in classification). Each --methods spec adds a
Distill student trained with the task loss + that distillation loss instead; a spec of the paper's terms
alone (soft, hidden) is the α:β stage of the same weights.
"""
from __future__ import annotations

from keras_kd import results
from keras_kd.config import Config
from keras_kd.distill import methods
from keras_kd.tasks.base import Stage, Task, students, unique_stages
from keras_kd.tasks.classify import distilled_name, select_skip_reason, select_skipped


class TransferTask(Task):
    def variants(self, cfg: Config):
        """(name suffix, softmax) of each experiment variant: verification adds the joint softmax one."""
        return [("", False)]

    def teacher_stage(self, stage: Stage) -> tuple:
        """The variant's teacher: the softmax one for a joint-softmax student."""
        return self.name, "teacher" + ("_softmax" if stage.softmax else "")

    def plan(self, cfg: Config) -> list:
        t = self.name
        stages = []
        lr = cfg.lr_transfer or cfg.lr_init
        for suffix, softmax in self.variants(cfg):
            teacher = Stage(t, "teacher" + suffix, 1, "classify", cfg.teacher_transfer_epochs or cfg.transfer_epochs, lr,
                            init_from=("classify", "teacher"), softmax=softmax)
            stages.append(teacher)
            for st in students(cfg):
                d, kw = st.width_divisor, st.build
                pretrain = Stage(t, f"student_{st.tag}_pretrain{suffix}", d, "scratch", cfg.pretrain_epochs,
                                 cfg.lr_scratch, softmax=softmax, **kw)
                stages.append(pretrain)
                distilled = ("classify", distilled_name(st.tag, cfg))
                for init in cfg.transfer_inits:
                    if init == "select" and select_skip_reason(st.arch, cfg):
                        continue
                    start = {"pretrain": (t, pretrain.name), "select": (t, teacher.name)}.get(init, distilled)
                    epochs = (cfg.pretrain_transfer_epochs or cfg.transfer_epochs) if init == "pretrain" \
                        else cfg.transfer_epochs
                    for a, b in cfg.ab_grid:
                        stages.append(Stage(
                            t, f"student_{st.tag}_{init}_a{a:g}b{b:g}{suffix}", d, init, epochs,
                            lr, init_from=start, teacher=(t, teacher.name),
                            targets=tuple((n, w) for n, w in (("soft", a), ("hidden", b)) if w),
                            softmax=softmax, **kw))
                for terms in self.method_terms(cfg):
                    name = methods.paper_name(terms) or methods.spec_name(terms)
                    stages.append(Stage(t, f"student_{st.tag}_distill_{name}{suffix}", d, "distill",
                                        cfg.transfer_epochs, lr, init_from=distilled,
                                        teacher=(t, teacher.name), targets=tuple(terms), softmax=softmax, **kw))
        return unique_stages(stages)

    def skipped(self, cfg: Config) -> list:
        return super().skipped(cfg) + select_skipped(cfg, "--transfer_inits", cfg.transfer_inits)


def ab_columns(models: list) -> list:
    """The (α, β) of the models, sorted: the columns of the transfer tables."""
    return sorted({(float(m["alpha"]), float(m["beta"])) for m in models})


def ab_header(models: list) -> list:
    return [f"α={a:g},β={b:g}" for a, b in ab_columns(models)]


INIT_ROWS = (("Pretrain", "pretrain"), ("Distill", "distill"), ("Selected", "select"))
TABLE_INITS = tuple(init for _, init in INIT_ROWS)  # the students of the paper-shaped tables


def init_by_ab_rows(models: list, width: int, metric: str) -> list:
    """Rows Pretrain / Distill (and Selected when run), one column per (α, β) present among ``models``."""
    inits = [(row, init) for row, init in INIT_ROWS
             if init != "select" or results.find(models, role="student", width_divisor=width, init=init)]
    return [[row] + [results.cell(results.find(models, role="student", width_divisor=width, init=init, alpha=a,
                                               beta=b), metric)
                     for a, b in ab_columns(models)]
            for row, init in inits]
