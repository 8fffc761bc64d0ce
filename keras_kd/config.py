"""Config: every hyper-parameter of a run in one frozen dataclass.

`flags/` builds it from absl flags (with presets); library code takes a Config and never reads flags, so
it is testable and usable from Python without a command line. Its defaults are the `quick` preset, the
default of `python main.py` (`Config()` is that run); `flags/presets.py` holds the other presets as changes
to them.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = "classify"
    mode: str = "train"
    data: str = "synthetic"
    cls_data: str = ""                     # data of the classification stages; "" = same as data
    eval_data: str = ""                    # --mode=evaluate: the converted data to measure trained models on
    seeds: Tuple[int, ...] = ()            # several seeds, each in <model_dir>/seed<N> (keras_kd/seeds.py)
    share_teacher: bool = True             # with seeds: later seeds reuse the first seed's teachers
    model_dir: str = "runs"
    preset: str = "quick"
    seed: int = 0
    overwrite: bool = False
    strategy: str = "auto"
    parallel_stages: str = "auto"         # auto | off: two stages at once on a 2-core CPU (keras_kd/lanes.py)
    verbose: int = 1
    backup_steps: int = 0                  # back up training state every N steps; 0 = at each epoch end
    skip_corrupt: bool = False             # skip (and count) corrupt records instead of stopping
    cache: str = "auto"                    # decoded images kept: auto | memory | disk | off (data/pipeline.py)
    val_fraction: float = 0.1              # of the train split held out to choose models on (0: none; pipeline.py)
    teacher_cache: str = "off"             # off | memory | disk: precomputed teacher outputs (distill/teacher_cache.py)
    teacher: str = ""                      # a teacher model file/folder to distil from, none trained (teachers/external.py)
    teacher_spec: str = ""                 # its outputs and input contract (JSON); "" = beside the model
    teacher_outputs: str = ""              # a file of a teacher's outputs per record (teachers/outputs.py)
    teacher_precision: str = "auto"        # auto | float32 | bfloat16: what teachers compute in (models/precision.py)

    # models
    students: Tuple[int, ...] = (8,)       # ResNet-50 width divisors (Table 2: 2, 4, 8)
    student_arch: Tuple[str, ...] = ("resnet50",)  # models/archs.py; other archs add one student each
    student_width: float = 1.0             # width multiplier of the non-ResNet students
    resnet_blocks: Tuple[int, ...] = (3, 4, 6, 3)  # ResNet residual blocks per stage; smoke: 1,1,1,1
    image_size: int = 48
    embedding_dim: int = 0
    landmark_head: str = "spatial"         # spatial | pooled (the paper's fc on K) | heatmap (models/heads.py)

    # optimisation: the short-run recipe (docs/recipe.md; the paper's Nesterov SGD with step decay is the
    # paper preset; keras_kd/training.py)
    optimizer: str = "adamw"               # adamw | sgd (Nesterov, momentum)
    lr_schedule: str = "cosine"            # cosine | step (×lr_decay_factor every lr_decay_epochs)
    warmup_epochs: float = 0.3             # linear warm-up from 0 (cosine schedule)
    batch_size: int = 32                   # classification (global batch)
    align_batch_size: int = 32
    ids_per_batch: int = 8                 # verification: P identities × K images per batch
    images_per_id: int = 4
    lr_scratch: float = 3e-3
    lr_init: float = 1e-3
    lr_transfer: float = 6e-3              # align/verify teacher and initialized students; 0 = lr_init
    lr_decay_epochs: int = 30
    lr_decay_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.01
    teacher_epochs: int = 2
    student_epochs: int = 2
    fitnet_epochs: int = 1
    transfer_epochs: int = 5
    teacher_transfer_epochs: int = 5       # the align/verify teacher's; 0 = transfer_epochs
    pretrain_transfer_epochs: int = 2      # the Pretrain students' after their pretraining; 0 = transfer_epochs
    pretrain_epochs: int = 7
    steps_per_execution: int = 1

    # distillation
    temperature: float = 3.0
    tau2: bool = False
    alpha: float = 1.0                     # weight of the classification KD target
    cls_inits: Tuple[str, ...] = ("label", "scratch", "fitnet", "select")
    scratch_targets: Tuple[str, ...] = ("soft",)
    transfer_inits: Tuple[str, ...] = ("pretrain", "distill")
    ab_grid: Tuple[Tuple[float, float], ...] = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0))
    margin: float = 0.4
    mining: str = "batch_hard"
    verify_softmax: Tuple[bool, ...] = (True,)  # (False, True): Table 4's triplet-only variant too

    # more distillation methods (distill/methods.py): specs "name[:weight]" joined by "," or "+"
    kd: str = ""                           # the loss of the distilled classification student; "" = soft:alpha
    methods: Tuple[str, ...] = ()          # one extra distilled student per spec (the methods table)
    dkd_alpha: float = 1.0                 # Decoupled KD: weight of TCKD ...
    dkd_beta: float = 8.0                  # ... and of NCKD (mdistiller's CIFAR-100 setting)
    dkd_temperature: float = 4.0
    dist_beta: float = 1.0                 # DIST: inter-class relation weight ...
    dist_gamma: float = 1.0                # ... intra-class relation weight (official code's defaults)
    dist_tau: float = 1.0
    at_p: float = 2.0                      # attention transfer: attention = mean_c |F|^p
    at_beta: float = 1000.0                # ... its scale (the paper's β = 10³)
    rkd_distance_weight: float = 25.0      # RKD: λ_D and λ_A (Park et al.)
    rkd_angle_weight: float = 50.0

    # synthetic data
    synthetic_identities: int = 60
    synthetic_images: int = 80
    synthetic_size: int = 56

    def replace(self, **kw) -> "Config":
        return dataclasses.replace(self, **kw)
