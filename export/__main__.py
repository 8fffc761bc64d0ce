"""`python -m export --model_dir=runs --task=align [--models=...] [--formats=...] [--qat] [--prune=0.5]`.

Reads the run's Config from its config.json (export.config_from_run; flags given here win), exports, prints one line per model and a JSON summary
path. Bad input (missing or corrupt checkpoint, no data) prints one line ``error: <file>: <why>`` on
stderr and exits with code 2, leaving no partial export directory.
"""
from __future__ import annotations

import os
import sys

from absl import app, logging

import export
import flags.export_flags as export_flags
from keras_kd.data.example import DataError
from keras_kd.stages import Runner, StageError


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines about renamed signature inputs
    fv = export_flags.FLAGS
    try:
        cfg = export.config_from_run(fv.model_dir, fv.task, fv.data, fv.cls_data,
                                     **export_flags.config_overrides(fv))
        runner = Runner(cfg)
        options = export_flags.run_options(fv)
        if not options["models"]:
            options["models"] = export.stage_students(cfg.model_dir, cfg.task)
        records = export.run(runner, cfg.task, **options)
    except (export.ExportError, DataError, StageError) as e:  # optimize.OptimizeError is one
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in records:
        print(f"[done] {name}: {os.path.join(cfg.model_dir, cfg.task, 'export', name)}")
    return 0


if __name__ == "__main__":
    app.run(main)
