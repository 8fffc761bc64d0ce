"""The callbacks every training run gets (training.fit_stage): stop on NaN, keep the per-epoch logs, back up.

A stage killed at any moment resumes from its last backup with its whole history; a diverging one stops at
the first non-finite loss without backing up the state that produced it.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Optional

import numpy as np

from keras_kd import io
from keras_kd.keras import keras, tf


class NanGuard(keras.callbacks.Callback):
    """Stops at the first step whose loss is NaN/Inf and remembers where (TerminateOnNaN, but it says)."""

    def __init__(self):
        super().__init__()
        self.bad = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)) and self.bad is None:
            self.bad = (self._epoch, int(batch), float(loss))
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        # Weights can blow up without a NaN training loss and show it first on the validation split; the
        # backup of this epoch end (a callback after this one) must not keep them either.
        loss = (logs or {}).get("val_loss")
        if loss is not None and not np.isfinite(float(loss)) and self.bad is None:
            self.bad = (epoch, int((self.params or {}).get("steps") or 1) - 1, float(loss))
            self.model.stop_training = True


class EpochLog(keras.callbacks.Callback):
    """Per-epoch logs kept beside the backup (at `path`; None: in memory only), so a resumed stage reports
    its whole training history."""

    def __init__(self, path: Optional[str] = None):
        super().__init__()
        self.path = path
        self.epochs: Dict[int, dict] = {}
        if path and os.path.exists(path):
            with open(path) as f:
                self.epochs = {int(k): v for k, v in json.load(f).items()}

    def resume_at(self, epoch: int) -> None:
        """Forget epochs the backup does not hold (written after the last backup, before the kill)."""
        self.epochs = {e: v for e, v in self.epochs.items() if e < epoch}

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch] = {k: float(v) for k, v in (logs or {}).items()}
        if self.path:
            io.write_json(self.path, self.epochs)

    def history(self) -> Dict[str, List[float]]:
        keys = sorted({k for v in self.epochs.values() for k in v})
        return {k: [self.epochs[e].get(k, float("nan")) for e in sorted(self.epochs)] for k in keys}


class Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that says where a stage resumes and never backs up a state with a NaN loss."""

    def __init__(self, backup_dir: str, save_freq, guard: NanGuard, history: EpochLog, steps: int,
                 announce: Callable[[int, int], None]):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)
        # Its checkpointing needs only `extended.should_checkpoint`, which OneDeviceStrategy has too.
        self._supported_strategies += (tf.distribute.OneDeviceStrategy,)
        self.guard, self.history, self.steps, self.announce = guard, history, steps, announce

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        state = self._training_state
        epoch, batch = int(state._ckpt_saved_epoch.numpy()), int(state._ckpt_saved_batch.numpy())
        if epoch < 0:
            self.history.resume_at(0)
            return
        # What fit will do (worker_training_state.maybe_load_initial_counters_from_ckpt).
        if self.save_freq == "epoch" or batch < 0 or batch == self.steps - 1:
            start, step = epoch + 1, 0
        else:
            start, step = epoch, batch + 1
        self.history.resume_at(start)
        self.announce(start, step)

    def _backup(self, epoch, batch=0):
        if self.guard.bad is None:
            super()._backup(epoch, batch)
