"""The optimizer and learning-rate schedule of a stage: the paper's recipe, or the short-run one.

    sgd + step      the paper (Section 5): Nesterov SGD, ×lr_decay_factor every lr_decay_epochs.
    adamw + cosine  the quick preset: linear warm-up over warmup_epochs, then cosine decay to 0. A few
                    hundred steps is all a 2-core CPU affords per stage; the measurements behind the choice
                    are in docs/recipe.md.

Batch-norm scales and offsets and biases get no weight decay (the usual practice, He et al. 2019 "Bag of
Tricks"): decaying them only shrinks what the next normalization or layer rescales anyway.
"""
from __future__ import annotations

from keras_kd.config import Config
from keras_kd.keras import keras

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
NO_DECAY = ["bias", "gamma", "beta"]  # variable-name fragments left out of weight decay


def schedule(cfg: Config, lr: float, steps_per_epoch: int, epochs: int):
    """The learning rate against the optimizer's step counter (so a resumed stage continues it)."""
    total = max(1, steps_per_epoch * epochs)
    if cfg.lr_schedule == "cosine":
        warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
        if warmup:
            return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=lr,
                                                          warmup_steps=warmup)
        return keras.optimizers.schedules.CosineDecay(lr, total)
    if cfg.lr_schedule != "step":
        raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {cfg.lr_schedule!r}")
    bounds = [steps_per_epoch * e for e in range(cfg.lr_decay_epochs, epochs, cfg.lr_decay_epochs)]
    if not bounds:
        return lr
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        bounds, [lr * cfg.lr_decay_factor ** i for i in range(len(bounds) + 1)])


def settings(cfg: Config) -> dict:
    """The flags `optimizer` and `schedule` read for this optimizer and schedule, by name: what a stage's
    record keeps so that it is not reused after one of them changed (others, e.g. momentum under AdamW,
    change nothing and are left out)."""
    out = {"optimizer": cfg.optimizer, "weight_decay": cfg.weight_decay, "lr_schedule": cfg.lr_schedule}
    if cfg.optimizer == "sgd":
        out["momentum"] = cfg.momentum
    if cfg.lr_schedule == "cosine":
        out["warmup_epochs"] = cfg.warmup_epochs
    else:
        out.update(lr_decay_epochs=cfg.lr_decay_epochs, lr_decay_factor=cfg.lr_decay_factor)
    return out


def optimizer(cfg: Config, lr: float, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    rate = schedule(cfg, lr, steps_per_epoch, epochs)
    if cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(rate, momentum=cfg.momentum, nesterov=True,
                                   weight_decay=cfg.weight_decay or None)
    elif cfg.optimizer == "adamw":
        opt = keras.optimizers.AdamW(rate, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.weight_decay:
        opt.exclude_from_weight_decay(var_names=NO_DECAY)
    return opt
