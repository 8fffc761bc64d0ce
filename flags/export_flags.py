"""Flags of `python -m export`: definitions and validation, so bad values fail before any work.

The run's Config is not passed on the command line: it is read from the run's <model_dir>/<task>/config.json
(export.config_from_run; rebuilt from the stage records for a run that has none). A flag given here wins over
the saved value; one not given leaves it.
"""
from __future__ import annotations

from absl import flags

from export import FORMATS
from keras_kd.tasks import TASKS

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", "runs", "The training run's --model_dir (stages under <model_dir>/<task>/stages).")
flags.DEFINE_enum("task", None, list(TASKS), "Task whose students to export.")
flags.DEFINE_list("models", None, "Stage names to export (default: every evaluated student saved under "
                  "<model_dir>/<task>/stages; name a teacher here to export it too).")
flags.DEFINE_list("formats", list(FORMATS), "Any of " + ", ".join(FORMATS) + ".")
flags.DEFINE_bool("qat", False, "Also quantization-aware training with distillation → model_qat_int8.tflite.")
flags.DEFINE_integer("qat_epochs", 1, "Epochs of quantization-aware training.", lower_bound=1)
flags.DEFINE_float("prune", 0.0, "Also magnitude pruning with distillation to this sparsity (0 < s < 1; 0: "
                   "off) → model_pruned_fp32.tflite.", lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_integer("prune_epochs", 2, "Epochs of pruning fine-tuning.", lower_bound=1)
flags.DEFINE_integer("version", 1, "SavedModel version directory (TF Serving serves the highest).", lower_bound=1)
flags.DEFINE_bool("int8_io", False, "Full-integer TFLite files take uint8 pixels and return int8 outputs "
                  "(default: float input and outputs around the integer model).")
flags.DEFINE_integer("representative_samples", 100, "Training images calibrating full-integer quantization.",
                     lower_bound=1)
flags.DEFINE_string("data", "", "The run's --data directory (default: the synthetic set under "
                    "<model_dir>/data with the stages' class count).")
flags.DEFINE_string("cls_data", "", "The run's --cls_data, if it had one.")
flags.DEFINE_integer("embedding_dim", 0, "The run's --embedding_dim (verification).", lower_bound=0)
flags.DEFINE_integer("batch_size", None, "Classification/alignment batch of fine-tuning and evaluation "
                     "(default: Config's).", lower_bound=1)
flags.DEFINE_integer("ids_per_batch", None, "Verification fine-tuning batches: P identities ... (default: "
                     "Config's, at most half the identities).", lower_bound=2)
flags.DEFINE_integer("images_per_id", None, "... × K images each (default: Config's).", lower_bound=2)
flags.DEFINE_integer("seed", 0, "Random seed of QAT/pruning fine-tuning.", lower_bound=0)
flags.DEFINE_bool("overwrite", False, "Re-export even where export.json records the same checkpoint and options.")
flags.DEFINE_bool("update_results", True, "Merge the export records into <model_dir>/<task>/results.json.")
flags.DEFINE_integer("verbose", 0, "Keras fit verbosity of QAT/pruning.", lower_bound=0, upper_bound=2)

flags.mark_flag_as_required("task")
flags.register_validator("formats", lambda v: bool(v) and set(v) <= set(FORMATS),
                         "--formats: any of " + ", ".join(FORMATS))
flags.register_validator("prune", lambda v: v == 0.0 or 0.0 < v < 1.0, "--prune: a sparsity in (0, 1), or 0")


def config_overrides(fv: flags.FlagValues = FLAGS) -> dict:
    """Config fields of the flags given on the command line (the rest comes from the run's config.json), and
    verbose, which is this command's own."""
    kw = {name: fv[name].value for name in ("embedding_dim", "seed", "ids_per_batch", "images_per_id")
          if fv[name].present}
    if fv["batch_size"].present:
        kw.update(batch_size=fv.batch_size, align_batch_size=fv.batch_size)
    return dict(kw, verbose=fv.verbose)


def run_options(fv: flags.FlagValues = FLAGS) -> dict:
    """Keyword arguments of export.run."""
    return dict(models=fv.models or None, formats=tuple(fv.formats), qat=fv.qat, prune=fv.prune,
                version=fv.version, int8_io=fv.int8_io, qat_epochs=fv.qat_epochs, prune_epochs=fv.prune_epochs,
                representative_samples=fv.representative_samples, update_results=fv.update_results,
                overwrite=fv.overwrite)
