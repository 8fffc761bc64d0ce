"""keras-kd: distill face models. `python main.py --task=classify|align|verify [--preset=...] [--flagfile=...]`."""
from __future__ import annotations

import sys

from absl import app
from absl import flags as absl_flags
from absl import logging

import export
import flags.main_flags as main_flags
from keras_kd.data.example import DataError
from keras_kd import distribute, evaluate, seeds
from keras_kd.distribute import StrategyError
from keras_kd.stages import Runner, StageError
from keras_kd.tasks import TASKS

FLAGS = absl_flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # absl's INFO lines (TensorFlow's checkpoint saver) break progress bars
        logging.set_verbosity(logging.WARNING)
    cfg = main_flags.to_config()
    try:
        if cfg.mode == "predict":
            return predict_run(cfg)
        return evaluate_runs(cfg) if cfg.mode == "evaluate" else train_runs(cfg)
    except (DataError, StageError, StrategyError, export.ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def train_runs(cfg) -> int:
    """Trains the task (once per --seeds seed), exports, prints the results table."""
    strategy = distribute.get_strategy(cfg.strategy)  # once: a process can create MultiWorker only once
    per_seed, runner = {}, None
    for i, run_cfg in enumerate(seeds.configs(cfg)):
        if i and cfg.share_teacher and distribute.worker_id(strategy) == 0:
            seeds.share_teachers(seeds.seed_dir(cfg.model_dir, cfg.seeds[0]), run_cfg.model_dir)
        distribute.barrier(strategy)
        runner = Runner(run_cfg, strategy)
        per_seed[run_cfg.seed] = res = runner.run(run_cfg.task)
        if not runner.worker and FLAGS.export:
            task = TASKS[cfg.task]
            models = None if FLAGS.export_models == "all" else task.best_students(res["models"])
            how = ""
            if models:
                how = (f" (best by validation {task.headline})" if task.chosen_by(res["models"]) == "val" else
                       f" (best by TEST {task.headline}: no validation metrics, --val_fraction=0 or stages "
                       "trained before the val split existed)")
            print(f"[export] {cfg.task}: {', '.join(models) if models else 'all evaluated students'}{how}")
            export.run(runner, cfg.task, models=models)
        distribute.barrier(strategy)  # the other workers wait until the chief has exported
    if runner.worker:
        print(f"[done] worker {runner.worker}: finished; the chief writes results and exports")
        return 0
    if cfg.seeds:
        per_seed = {**seeds.finished(cfg.model_dir, cfg.task), **per_seed}
        print(seeds.write(cfg.model_dir, cfg.task, per_seed))
        print(f"[done] {len(per_seed)} seeds; mean ± std in {cfg.model_dir}/{cfg.task}/seeds.md")
        return 0
    md = f"{cfg.model_dir}/{cfg.task}/results.md"
    with open(md) as f:
        print(f.read())
    print(f"[done] {len(res['models'])} models; results in {cfg.model_dir}/{cfg.task}/results.json and {md}")
    return 0


def evaluate_runs(cfg) -> int:
    """--mode=evaluate: the trained models (of each --seeds seed) on --eval_data; prints the table."""
    per_seed = {c.seed: evaluate.run(c) for c in seeds.configs(cfg)}
    name = f"eval_{evaluate.eval_name(cfg.eval_data)}"
    if cfg.seeds:
        print(seeds.write(cfg.model_dir, cfg.task, per_seed, stem=name, title=f"{cfg.task} on {cfg.eval_data}"))
    else:
        with open(f"{cfg.model_dir}/{cfg.task}/{name}.md") as f:
            print(f.read())
    print(f"[done] evaluated on {cfg.eval_data}; table in {cfg.model_dir}/{cfg.task}/{name}.md")
    return 0


def predict_run(cfg) -> int:
    """--mode=predict: one student (a stage or an export) on every image of --images."""
    from export import predict
    path = predict.run(FLAGS.images, cfg.model_dir, cfg.task, FLAGS.model, FLAGS.predict_dir,
                       lambda: Runner(cfg, distribute.get_strategy("auto")))
    print(f"[done] predictions of {FLAGS.images} in {path} (and predictions.csv beside it)")
    return 0


if __name__ == "__main__":
    app.run(main)
