"""Flags of `python main.py`: definitions, validation, presets, and the Config they make."""
from __future__ import annotations

from absl import flags

from flags.presets import PRESETS
from keras_kd.config import Config
from keras_kd.distribute import STRATEGIES
from keras_kd.distill import methods
from keras_kd.models import archs
from keras_kd.tasks import TASKS

D = Config()  # the defaults: the quick preset (flags/presets.py)


def _d(name: str):
    """Config's default of `name` as the flag holds it (to_config turns it back)."""
    value = getattr(D, name)
    if name == "ab_grid":
        return [f"{a:g}:{b:g}" for a, b in value]
    if name == "verify_softmax":
        return ["on" if v else "off" for v in value]
    if isinstance(value, tuple):
        return [str(v) for v in value]
    return value


flags.DEFINE_enum("task", _d("task"), list(TASKS), "Experiment to run.")
flags.DEFINE_enum("mode", _d("mode"), ["train", "evaluate", "predict"], "train: train (or reuse) every stage, "
                  "then write results. evaluate: measure the trained models of --model_dir on --eval_data, no "
                  "training. predict: run one student on the images of --images (export/predict.py).")
flags.DEFINE_string("images", "", "--mode=predict: a folder of images (JPEG, PNG, BMP, GIF).")
flags.DEFINE_string("model", "", "--mode=predict: a stage name of --model_dir/--task, or an exported "
                    "SavedModel (its export/<name> folder or a version folder); default: the best student.")
flags.DEFINE_string("predict_dir", "", "--mode=predict: where predictions go (default "
                    "<model_dir>/<task>/predict).")
flags.DEFINE_string("eval_data", _d("eval_data"),
                    "--mode=evaluate: a directory of converted TFRecords; its test split is "
                    "used (convert with --all_test to use all of it).")
flags.DEFINE_list("seeds", _d("seeds"),
                  "Run once per seed, seed N into <model_dir>/seed<N>, then write mean ± std over "
                  "the seeds to <model_dir>/<task>/seeds.md (with --mode=evaluate: eval_<name>.md).")
flags.DEFINE_bool("share_teacher", _d("share_teacher"),
                  "With --seeds: later seeds reuse the teachers trained with the first "
                  "seed (the seeds vary the students); --noshare_teacher trains a teacher per seed.")
flags.DEFINE_string("data", _d("data"), "'synthetic' (generated, no download) or a directory of "
                    "converted TFRecords (python -m keras_kd.data.convert).")
flags.DEFINE_string("cls_data", _d("cls_data"), "Data of the classification stages that align/verify start from "
                    "(default: --data).")
flags.DEFINE_string("model_dir", _d("model_dir"), "Where stages, results and logs go; finished stages are reused.")
flags.DEFINE_enum("preset", _d("preset"), list(PRESETS), "Named bundle of defaults: " + ", ".join(PRESETS))
flags.DEFINE_integer("seed", _d("seed"), "Random seed (weights init, shuffling, augmentation).", lower_bound=0)
flags.DEFINE_bool("overwrite", _d("overwrite"), "Retrain stages even when saved ones exist.")
flags.DEFINE_enum("strategy", _d("strategy"), list(STRATEGIES),
                  "tf.distribute strategy: auto (Mirrored over several GPUs, else one device), one_device, "
                  "mirrored, multi_worker (reads TF_CONFIG; python -m keras_kd.launch tries it locally), tpu.")
flags.DEFINE_enum("parallel_stages", _d("parallel_stages"), ["auto", "off"],
                  "auto: on a CPU-only machine of 2 cores, stages that do not need each other train side by side, "
                  "one in this process and one in a child process (each stage seeds itself: results as one after "
                  "another, up to run-to-run noise; the second core is otherwise a third idle). off: one after another.")
flags.DEFINE_integer("backup_steps", _d("backup_steps"),
                     "Back up the training state every N steps (0: at each epoch end); "
                     "a killed run resumes from the last backup when the same command is run again.",
                     lower_bound=0)
flags.DEFINE_bool("skip_corrupt", _d("skip_corrupt"), "Skip unreadable records (CRC errors, undecodable images, labels "
                  "out of range) instead of stopping; they are counted and listed in the log first.")
flags.DEFINE_enum("cache", _d("cache"), ["auto", "memory", "disk", "off"],
                  "Decoded, resized images kept between epochs: auto (in memory when a split fits a quarter of "
                  "the RAM, else streamed from the shards), memory, disk (files under <model_dir>/data_cache/) "
                  "or off (decoded every epoch).")
flags.DEFINE_float("val_fraction", _d("val_fraction"), "Fraction of the training data held out as the validation "
                   "split (at most 500 images; by identity when the data was split by identity), evaluated after "
                   "every epoch (val_* curves) and used to choose the best student; the test split only measures. "
                   "0: no validation split (the best student is then chosen on the test split, and the run says so).",
                   lower_bound=0.0, upper_bound=0.5)
flags.DEFINE_enum("teacher_cache", _d("teacher_cache"), ["off", "memory", "disk"],
                  "Compute the teacher's logits and hidden layer once per training image (un-augmented centre "
                  "crop) instead of in every step: memory (this run) or disk (<data>/teacher_cache/, reused "
                  "while teacher, data and pre-processing are unchanged). Students trained so are named *_tc. "
                  "Outputs a crop moves (alignment's spatial K) stay online.")
flags.DEFINE_enum("teacher_precision", _d("teacher_precision"), ["auto", "float32", "bfloat16"],
                  "What the teachers this run trains compute in: bfloat16 (float32 weights and outputs) or float32. "
                  "auto: bfloat16 on a CPU with bfloat16 instructions (AMX, AVX512_BF16), where it is faster, "
                  "float32 elsewhere. Students are always float32.")
flags.DEFINE_string("teacher", _d("teacher"), "Distil from this teacher instead of training one: a Keras model file "
                    "(.keras, .h5) or a SavedModel folder, run frozen in every step. Its outputs and input contract "
                    "come from --teacher_spec (README, \"Distill your own teacher\").")
flags.DEFINE_string("teacher_spec", _d("teacher_spec"),
                    "JSON naming --teacher's outputs (embedding, logits, hidden, landmarks) "
                    "and its input (size, range, mean, std, channels); default <model>.json beside a file, "
                    "<folder>/keras_kd_teacher.json in a SavedModel folder.")
flags.DEFINE_string("teacher_outputs", _d("teacher_outputs"),
                    "Distil from a file of a teacher's outputs per record instead of "
                    "a teacher (any framework; keras_kd/teachers/outputs.py; python -m keras_kd.teachers.dlib "
                    "writes one).")
flags.DEFINE_bool("export", True, "After training, export students as SavedModel + TFLite (docs/serving.md); "
                  "--noexport skips it.")
flags.DEFINE_enum("export_models", "best", ["best", "all"], "Which students main.py exports: the best of each "
                  "network (ResNet width or architecture) by the task's headline metric, or all (python -m "
                  "export offers every option).")
flags.DEFINE_integer("verbose", _d("verbose"), "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.",
                     lower_bound=0, upper_bound=2)

flags.DEFINE_list("students", _d("students"), "ResNet-50 student width divisors (channels ÷ d), e.g. 2,4,8.")
flags.DEFINE_list("student_arch", _d("student_arch"), "Student architectures (keras_kd/models/archs.py): resnet50 "
                  "(one student per --students divisor), mobilefacenet, mobilenet_v3_small, mobilenet_v3_large "
                  "(one student each, at --student_width), distilled from the same teacher; e.g. "
                  "resnet50,mobilefacenet.")
flags.DEFINE_float("student_width", _d("student_width"),
                   "Width multiplier of the non-ResNet students (MobileNetV3's alpha; "
                   "MobileFaceNet's channels × width).", lower_bound=0.05)
flags.DEFINE_list("resnet_blocks", _d("resnet_blocks"), "Residual blocks per stage of the "
                  "ResNet teacher and students: 3,4,6,3 is ResNet-50 (every preset but smoke); smoke's 1,1,1,1 "
                  "builds and traces in a fraction of the time, for tests that check plumbing.")
flags.DEFINE_integer("image_size", _d("image_size"),
                     "Input crop size (crops of images resized by 256/224).", lower_bound=32)
flags.DEFINE_enum("landmark_head", _d("landmark_head"),
                  ["heatmap", "spatial", "pooled"], "Alignment head (models/heads.py): "
                  "heatmap (soft-argmax over heat maps of the stage-2 map; K is the heat maps), spatial (fc over "
                  "the last map reduced to 32 channels; K is that map) or pooled (the paper's fc on the pooled "
                  "layer K).")
flags.DEFINE_integer("embedding_dim", _d("embedding_dim"), "Project K to this size for verification (0: use K as is).",
                     lower_bound=0)

flags.DEFINE_integer("batch_size", _d("batch_size"), "Global batch of classification stages.", lower_bound=1)
flags.DEFINE_integer("align_batch_size", _d("align_batch_size"), "Global batch of alignment stages.", lower_bound=1)
flags.DEFINE_integer("ids_per_batch", _d("ids_per_batch"), "Verification batches: P identities ...", lower_bound=2)
flags.DEFINE_integer("images_per_id", _d("images_per_id"), "... × K images each.", lower_bound=2)
flags.DEFINE_enum("optimizer", _d("optimizer"), ["sgd", "adamw"], "sgd: Nesterov SGD with --momentum (the paper); "
                  "adamw: AdamW (decoupled --weight_decay).")
flags.DEFINE_enum("lr_schedule", _d("lr_schedule"),
                  ["step", "cosine"], "step: × --lr_decay_factor every --lr_decay_epochs "
                  "(the paper); cosine: linear warm-up over --warmup_epochs, then cosine decay to 0.")
flags.DEFINE_float("warmup_epochs", _d("warmup_epochs"),
                   "Linear learning-rate warm-up (cosine schedule).", lower_bound=0)
flags.DEFINE_float("lr_scratch", _d("lr_scratch"), "Learning rate of networks trained from scratch.", lower_bound=0)
flags.DEFINE_float("lr_init", _d("lr_init"), "Learning rate of initialized networks.", lower_bound=0)
flags.DEFINE_float("lr_transfer", _d("lr_transfer"),
                   "Learning rate of the align/verify teacher and the students initialized "
                   "from another stage (0: --lr_init): a new task head learns from a trunk trained for another task.",
                   lower_bound=0)
flags.DEFINE_integer("lr_decay_epochs", _d("lr_decay_epochs"), "Step decay every this many epochs.", lower_bound=1)
flags.DEFINE_float("lr_decay_factor", _d("lr_decay_factor"), "Multiplier of each step decay.", lower_bound=0)
flags.DEFINE_float("momentum", _d("momentum"), "Nesterov momentum.", lower_bound=0)
flags.DEFINE_float("weight_decay", _d("weight_decay"),
                   "Decoupled weight decay (0: none); never on biases and batch-norm "
                   "γ/β.", lower_bound=0)
for _name, _what in [("teacher", "the classification teacher"), ("student", "classification students"),
                     ("fitnet", "FitNet hint pre-training"),
                     ("transfer", "align/verify Distill students (and the default of the two below)"),
                     ("pretrain", "align/verify Pretrain students")]:
    flags.DEFINE_integer(f"{_name}_epochs", _d(f"{_name}_epochs"), f"Epochs of {_what}.", lower_bound=1)
for _name, _what in [("teacher_transfer", "the align/verify teacher"),
                     ("pretrain_transfer", "the Pretrain students after their pretraining")]:
    flags.DEFINE_integer(f"{_name}_epochs", _d(f"{_name}_epochs"), f"Epochs of {_what} (0: --transfer_epochs).",
                         lower_bound=0)
flags.DEFINE_integer("steps_per_execution", _d("steps_per_execution"),
                     "Train steps per tf.function call.", lower_bound=1)

flags.DEFINE_float("temperature", _d("temperature"), "Soft-target temperature τ.", lower_bound=0.01)
flags.DEFINE_bool("tau2", _d("tau2"), "Scale the soft-target loss by τ² (Hinton); the paper does not.")
flags.DEFINE_float("alpha", _d("alpha"), "Weight of the classification distillation target.", lower_bound=0)
flags.DEFINE_list("cls_inits", _d("cls_inits"), "Classification students: label = all layers initialized (the "
                  "paper's), scratch, fitnet, select = every k-th channel of the teacher's weights (ResNet only).")
flags.DEFINE_list("scratch_targets", _d("scratch_targets"), "Targets of students distilled from scratch (Table 1): "
                  "soft, logits, hidden.")
flags.DEFINE_list("transfer_inits", _d("transfer_inits"), "Alignment/verification student inits: pretrain, distill "
                  "(the paper's), select = every k-th channel of the task's trained teacher (ResNet only).")
flags.DEFINE_list("ab_grid", _d("ab_grid"), "α:β pairs of the transfer loss (soft-target weight : hidden weight).")
flags.DEFINE_float("margin", _d("margin"), "Triplet margin λ.", lower_bound=0)
flags.DEFINE_enum("mining", _d("mining"), ["batch_hard", "semi_hard"], "Triplet mining inside the batch.")
flags.DEFINE_list("verify_softmax", _d("verify_softmax"), "Verification variants: off (triplet only), on (+ softmax).")

flags.DEFINE_string("kd", _d("kd"), "Loss of the distilled classification student ('Ours', which align/verify's "
                    "Distill students start from): name[:weight] terms joined by ',' or '+', e.g. "
                    "soft:1,hidden:0.5. Default: soft:--alpha. Names: " + ", ".join(methods.choices()))
flags.DEFINE_list("methods", _d("methods"), "One more distilled student per spec, for the methods table: classify "
                  "starts it from the label-only student, align/verify from the distilled classification "
                  "student. Terms of one spec are joined by '+', e.g. none,soft,dkd,at,soft+at:2 "
                  "(none: the task loss alone, the control).")
for _name, _default, _help, _lower in methods.hyperparameters():  # one edit in methods.py adds one
    flags.DEFINE_float(_name, _default, _help, lower_bound=_lower)

flags.DEFINE_integer("synthetic_identities", _d("synthetic_identities"), "Synthetic data: identities.", lower_bound=2)
flags.DEFINE_integer("synthetic_images", _d("synthetic_images"), "Synthetic data: images per identity.", lower_bound=2)
flags.DEFINE_integer("synthetic_size", _d("synthetic_size"), "Synthetic data: image size in pixels.", lower_bound=32)


def _positive_ints(values):
    return values is None or all(v.strip().isdigit() and int(v) > 0 for v in values)


def _ab_pairs(values):
    try:
        return values is None or all(len(_split_ab(v)) == 2 for v in values)
    except ValueError:
        return False


def _split_ab(v: str):
    a, b = v.split(":")
    return float(a), float(b)


flags.register_validator("seeds", lambda v: all(x.strip().isdigit() for x in v) and len(set(v)) == len(v),
                         "--seeds: distinct non-negative integers, e.g. 0,1,2")
flags.register_validator("students", _positive_ints, "--students: positive integers, e.g. 2,4,8")
flags.register_validator("resnet_blocks", lambda v: _positive_ints(v) and len(v) == 4,
                         "--resnet_blocks: 4 positive integers, the blocks of each stage, e.g. 3,4,6,3")
flags.register_validator("student_arch", lambda v: bool(v) and set(v) <= set(archs.ARCHS) and len(set(v)) == len(v),
                         f"--student_arch: distinct names among {', '.join(archs.ARCHS)}")
flags.register_validator("ab_grid", _ab_pairs, "--ab_grid: α:β pairs of numbers, e.g. 0:0,0:1,1:0")
flags.register_validator("scratch_targets", lambda v: set(v) <= {"soft", "logits", "hidden"},
                         "--scratch_targets: any of soft, logits, hidden")
flags.register_validator("cls_inits", lambda v: bool(v) and set(v) <= {"label", "scratch", "fitnet", "select"},
                         "--cls_inits: any of label, scratch, fitnet, select")
flags.register_validator("transfer_inits", lambda v: bool(v) and set(v) <= {"pretrain", "distill", "select"},
                         "--transfer_inits: any of pretrain, distill, select")
flags.register_validator("verify_softmax", lambda v: v is None or (bool(v) and set(v) <= {"off", "on"}),
                         "--verify_softmax: any of off, on")


def _kd_specs(values) -> bool:
    """Each spec parses (unknown names, bad weights, a name twice: the error says which and why)."""
    for v in values:
        try:
            methods.parse_kd(v)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from None
    return True


@flags.multi_flags_validator(["mode", "eval_data"], message="--mode=evaluate needs --eval_data (a converted "
                             "data directory), and --eval_data is used only by it")
def _eval_data_for_evaluate(v: dict) -> bool:
    return (v["mode"] == "evaluate") == bool(v["eval_data"])


@flags.multi_flags_validator(["mode", "images"], message="--mode=predict needs --images (a folder of images), "
                             "and --images is used only by it")
def _images_for_predict(v: dict) -> bool:
    return (v["mode"] == "predict") == bool(v["images"])


@flags.multi_flags_validator(["teacher", "teacher_outputs", "teacher_cache", "teacher_spec"],
                             message="--teacher and --teacher_outputs exclude each other, --teacher_cache "
                             "caches a trained teacher (a --teacher_outputs file already is one), and "
                             "--teacher_spec goes with --teacher")
def _one_teacher(v: dict) -> bool:
    if v["teacher"] and v["teacher_outputs"]:
        return False
    if v["teacher_outputs"] and v["teacher_cache"] != "off":
        return False
    return not v["teacher_spec"] or bool(v["teacher"])


flags.register_validator("kd", lambda v: _kd_specs([v]), "--kd: name[:weight] terms")
flags.register_validator("methods", _kd_specs, "--methods: specs of name[:weight] terms joined by '+'")


def apply_preset(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Fills every flag not given explicitly from the preset (then from Config's defaults)."""
    for name, value in PRESETS[fv.preset].items():
        if not fv[name].present:
            fv[name].value = value


def to_config(fv: flags.FlagValues = flags.FLAGS) -> Config:
    apply_preset(fv)
    kw = {}
    for field in Config.__dataclass_fields__:
        if field not in fv:
            continue
        value = fv[field].value
        if value is None:
            continue
        if field in ("students", "seeds", "resnet_blocks"):
            value = tuple(int(v) for v in value)
        elif field == "ab_grid":
            value = tuple(_split_ab(v) for v in value)
        elif field == "verify_softmax":
            value = tuple(v == "on" for v in value)
        elif isinstance(value, list):
            value = tuple(value)
        kw[field] = value
    return Config(**kw)
