"""How a network is trained: the optimizer and learning-rate schedule (the paper's recipe, or the short-run
one) and `fit_stage`, the one training loop of the stages and of export's QAT and pruning.

    sgd + step      the paper (Section 5): Nesterov SGD, ×lr_decay_factor every lr_decay_epochs.
    adamw + cosine  the quick preset: linear warm-up over warmup_epochs, then cosine decay to 0. A few
                    hundred steps is all a 2-core CPU affords per stage; the measurements behind the choice
                    are in docs/recipe.md.

Batch-norm scales and offsets and biases get no weight decay (the usual practice, He et al. 2019 "Bag of
Tricks"): decaying them only shrinks what the next normalization or layer rescales anyway.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from keras_kd import conv_grad
from keras_kd.callbacks import Backup, EpochLog, NanGuard
from keras_kd.config import Config
from keras_kd.keras import keras, tf

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


@dataclasses.dataclass
class Fitted:
    """What a `fit_stage` did."""
    history: Dict[str, List[float]]  # per-epoch logs, the epochs trained before a resume included
    seconds: float                   # this fit's, not counting the epochs trained before a resume
    resumed: Optional[Tuple[int, int]] = None    # (epoch, step), 0-based, it resumed at from the backup
    nan: Optional[Tuple[int, int, float]] = None  # (epoch, step, loss) of the first NaN/Inf loss: it stopped there


def fit_stage(model: keras.Model, cfg: Config, lr: float, data, epochs: int, steps: int, *,
              validation: Optional[tuple] = None, backup_dir: Optional[str] = None,
              history_path: Optional[str] = None, on_resume: Optional[Callable[[int, int], None]] = None,
              callbacks: Sequence[keras.callbacks.Callback] = (), strategy: Optional[tf.distribute.Strategy] = None,
              steps_per_execution: int = 1) -> Fitted:
    """Compiles `model` with the configured optimizer, its schedule peaking at `lr`, and fits it for `epochs` ×
    `steps` on `data`, evaluating `validation` ((dataset, steps)) after every epoch.

    The optimizer is made under `strategy`'s scope (default: the current one), which must be the one `model`
    was built under; fit then runs under it. It stops at the first NaN/Inf loss (`Fitted.nan`). With
    `backup_dir`, the training state is backed up every cfg.backup_steps steps (0: every epoch) and a backup
    found there is resumed (`on_resume(epoch, step)` is told where); `history_path` (default: history.json in
    `backup_dir`) keeps the epochs' logs across a kill. `callbacks` run after these.
    """
    conv_grad.install()  # keras-kd's Conv2D input gradient, before fit traces the train step (idempotent)
    with (strategy or tf.distribute.get_strategy()).scope():
        model.compile(optimizer(cfg, lr, steps, epochs), steps_per_execution=steps_per_execution)
    guard = NanGuard()
    if backup_dir and not history_path:
        history_path = os.path.join(backup_dir, "history.json")
    epoch_log = EpochLog(history_path)
    resumed = []

    def announce(epoch: int, step: int) -> None:
        resumed.append((epoch, step))
        if on_resume is not None:
            on_resume(epoch, step)

    own = [guard, epoch_log]
    if backup_dir:
        own.append(Backup(backup_dir, cfg.backup_steps or "epoch", guard, epoch_log, steps, announce))
    val_data, val_steps = validation or (None, None)
    t0 = time.time()
    history = model.fit(data, epochs=epochs, steps_per_epoch=steps, callbacks=own + list(callbacks),
                        validation_data=val_data, validation_steps=val_steps, verbose=cfg.verbose)
    seconds = time.time() - t0
    hist = epoch_log.history() or {k: [float(v) for v in vs] for k, vs in history.history.items()}
    return Fitted(hist, seconds, resumed[0] if resumed else None, guard.bad)
