"""Ship the students: SavedModel (TF Serving) and LiteRT/TFLite exports of trained stages, verified.

    python -m export --model_dir=runs --task=align [--models=a,b] [--formats=...] [--qat] [--prune=0.5]
    records = export.run(runner, task)          # from Python / main.py, after runner.run(task)

The orchestration and the export record are in export/run.py; the run's Config read back in run_config.py; the
formats in saved_model.py and tflite.py; QAT and pruning in optimize.py; --mode=predict in predict.py.
"""
from export.run import (DEFAULT_FORMATS, EXPORT_FILE, EXPORTED_KINDS, FORMATS, check_qat, default_models,
                        flat_metrics, load_stage, merge_into_results, run, saved_model_dir, stage_students,
                        teacher_of, verification_samples)
from export.run_config import config_from_run, config_from_stages
from export.saved_model import ExportError

__all__ = ["DEFAULT_FORMATS", "EXPORTED_KINDS", "EXPORT_FILE", "ExportError", "FORMATS", "check_qat",
           "config_from_run", "config_from_stages", "default_models", "flat_metrics", "load_stage",
           "merge_into_results", "run", "saved_model_dir", "stage_students", "teacher_of", "verification_samples"]
