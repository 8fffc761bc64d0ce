"""keras-kd: distill face models. `python main.py --task=classify|align|verify [--preset=...] [--flagfile=...]`."""
from __future__ import annotations

import sys

from absl import app
from absl import flags as absl_flags

import export
import flags.main_flags as main_flags
from keras_kd.data.example import DataError
from keras_kd import distribute
from keras_kd.distribute import StrategyError
from keras_kd.stages import Runner, StageError
from keras_kd.tasks import TASKS

FLAGS = absl_flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cfg = main_flags.to_config()
    try:
        runner = Runner(cfg)
        res = runner.run(cfg.task)
        if runner.worker:
            distribute.barrier(runner.strategy)  # until the chief has exported
            print(f"[done] worker {runner.worker}: finished; the chief writes results and exports")
            return 0
        if FLAGS.export:
            task = TASKS[cfg.task]
            models = None if FLAGS.export_models == "all" else task.best_students(res["models"])
            print(f"[export] {cfg.task}: {', '.join(models) if models else 'all evaluated students'}")
            export.run(runner, cfg.task, models=models)
        distribute.barrier(runner.strategy)
    except (DataError, StageError, StrategyError, export.ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = f"{cfg.model_dir}/{cfg.task}/results.md"
    with open(md) as f:
        print(f.read())
    print(f"[done] {len(res['models'])} models; results in {cfg.model_dir}/{cfg.task}/results.json and {md}")
    return 0


if __name__ == "__main__":
    app.run(main)
