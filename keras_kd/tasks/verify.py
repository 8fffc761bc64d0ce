"""Face verification (Section 4.2, Tables 4-5): triplet loss on K, optionally joint with softmax."""
from __future__ import annotations

import os

import numpy as np

from keras_kd import metrics, plots, results
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.distill import losses
from keras_kd.tasks import verification
from keras_kd.tasks.base import Stage, Task, input_config, predict
from keras_kd.tasks.transfer import TABLE_INITS, TransferTask, ab_header, init_by_ab_rows


class Verify(TransferTask):
    name = "verify"
    headline = "rank1"
    heads = ("embedding",)
    fraction_metrics = Task.fraction_metrics + ("rank1", "pair_acc", "tar_at_far")
    table_metrics = cache_metrics = ("rank1", "pair_acc")
    labels = {"rank1": "rank-1 %", "pair_acc": "pair acc %"}
    model_output_keys = serving_output_names = ("embedding",)
    shape_flags = ("embedding_dim",)

    def variants(self, cfg: Config):
        return [("_softmax" if s else "", s) for s in cfg.verify_softmax]

    def plan(self, cfg: Config) -> list:
        """The transfer plan; the joint softmax variant only where its labels are the head's classes.

        Its softmax is the classification head every network keeps, whose classes are --cls_data's
        identities: --data's labels would index someone else's classes (or none at all).
        """
        if any(cfg.verify_softmax) and not self.labels_index_classes(cfg):
            raise ValueError(f"--verify_softmax=on trains the classification head on the identity labels of "
                             f"--data={cfg.data}, but that head's classes are those of --cls_data={cfg.cls_data}; "
                             "use --verify_softmax=off, or --cls_data equal to --data")
        return super().plan(cfg)

    def batch_config(self, cfg: Config, training: bool) -> pipeline.InputConfig:
        pk = cfg.ids_per_batch * cfg.images_per_id
        return input_config(cfg, pk, pk=(cfg.ids_per_batch, cfg.images_per_id) if training else None)

    def settings(self, stage, cfg):
        return {"margin": cfg.margin, "mining": cfg.mining, "softmax": stage.softmax,
                "embedding_dim": cfg.embedding_dim}

    def task_loss(self, stage: Stage, cfg: Config):
        def loss(y, s):
            value = losses.triplet(y["label"], s["embedding"], cfg.margin, cfg.mining)
            if stage.softmax:
                value += losses.label_ce(y["label"], s["logits"])
            return value
        return loss

    def evaluate(self, model, data_dir, cfg, split="test"):
        ds = pipeline.make_dataset(data_dir, split, self.batch_config(cfg, False), training=False)
        out, tgt = predict(model, ds, ["embedding"])
        m = self.metrics(out, tgt)
        pm, art = verification.pair_metrics(out["embedding"], tgt, data_dir, cfg.seed)
        m.update(pm)
        return m, art

    def metrics(self, outputs, targets):
        """Rank-1 of the embeddings (pair accuracy needs the data's pairs: `evaluate` adds it)."""
        return {"rank1": metrics.rank1(outputs["embedding"], targets["label"])}

    def serving_outputs(self, raw, size, offset, to_input):
        """The embedding [N, D], unit length as the network outputs it."""
        return {"embedding": raw["embedding"]}

    def expected_serving_outputs(self, raw, image_size, input_hw=None):
        return {"embedding": raw["embedding"]}

    def prediction_row(self, outputs, i):
        return {"embedding": np.round(outputs["embedding"][i], 6).tolist()}

    def csv_fields(self, row):
        return {f"e{j}": v for j, v in enumerate(row["embedding"])}

    def tables(self, models):
        """Tables 4 (triplet loss only) and 5 (triplet + softmax): rank-1 per width, init and α:β; then
        every verification metric per model."""
        out: list = []
        for name, softmax, loss in (("Table 4", False, "triplet loss only"), ("Table 5", True, "triplet + softmax")):
            cands = [m for m in results.paper_students(models) if bool(m.get("softmax", False)) == softmax
                     and m["init"] in TABLE_INITS]
            if not cands:
                continue
            rows = [[f"/{d}"] + r for d in sorted({m["width_divisor"] for m in cands})
                    for r in init_by_ab_rows(cands, d, "rank1")]
            out += ([""] if out else []) + [f"## {name} shape: verification rank-1 % (higher is better), {loss}; "
                                            f"teacher {results.cell(results.teacher_of(models, softmax), 'rank1')}", ""]
            out += results.table(["student", "init"] + ab_header(cands), rows)
        every = ["tar_at_far_1e-3_all"] if any("tar_at_far_1e-3_all" in m.get("metrics", {}) for m in models) else []
        return out + results.per_model_table("Verification metrics per model (higher is better)", models,
                                             ["rank1", "pair_acc", "tar_at_far_1e-3"] + every)

    def plots(self, artifacts, out_dir, models=(), data_dir="", cfg=None):
        curves = {n: a["roc"] for n, a in artifacts.items() if "roc" in a}
        if not curves:
            return []
        path = os.path.join(out_dir, "roc.png")
        plots.plot_roc(curves, path)
        return [path]
