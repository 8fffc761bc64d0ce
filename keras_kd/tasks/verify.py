"""Face verification (Section 4.2, Tables 4-5): triplet loss on K, optionally joint with softmax."""
from __future__ import annotations

import os

from keras_kd import metrics, results
from keras_kd.config import Config
from keras_kd.data import pipeline
from keras_kd.distill import losses
from keras_kd.tasks import verification
from keras_kd.tasks.base import Stage, input_config, predict
from keras_kd.tasks.transfer import TransferTask


class Verify(TransferTask):
    name = "verify"
    headline = "rank1"
    heads = ("embedding",)

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
        m = {"rank1": metrics.rank1(out["embedding"], tgt["label"])}
        pm, art = verification.pair_metrics(out["embedding"], tgt, data_dir, cfg.seed)
        m.update(pm)
        return m, art

    def plots(self, artifacts, out_dir, models=(), data_dir="", cfg=None):
        curves = {n: a["roc"] for n, a in artifacts.items() if "roc" in a}
        if not curves:
            return []
        path = os.path.join(out_dir, "roc.png")
        results.plot_roc(curves, path)
        return [path]
