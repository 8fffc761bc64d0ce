"""The registry of distillation losses: small components the Distiller adds to the task loss, by name.

    --kd=soft:1,hidden:0.5        parse_kd → [("soft", 1.0), ("hidden", 0.5)]: the paper's Eq. 5, α = 1, β = 0.5
    create("dkd", cfg)            → DKD(alpha=cfg.dkd_alpha, beta=cfg.dkd_beta, temperature=cfg.dkd_temperature)

Each component says which features of the two networks it compares (`keys`: model outputs, or the named
feature layers of `models/resnet.FEATURE_LAYERS`), whether a narrower student feature goes through a learned
adapter, whether it needs identity labels, and whether it is relational (compares examples with each
other). Its hyper-parameters are its dataclass fields (`hp`), read from `Config.<prefix>_<field>`; main.py's
flags `--<prefix>_<field>` are defined from them (`hyperparameters`). The formulas are in `distill/losses.py`.

| name | compares | defaults (source) |
|---|---|---|
| soft | logits: KL(P^τ_T ‖ P^τ_S) (Hinton; the paper's Eq. 2) | τ = 3, no τ² (the paper) |
| logits | logits: mean squared difference (Ba & Caruana) | |
| hidden | the pooled layer K, through a dense adapter when narrower (the paper's β term) | |
| hint | stage-2 output through a 1×1 convolution (FitNet's hint; `fitnet` is the same loss) | |
| dkd | logits + labels: α·TCKD + β·NCKD (Zhao et al., CVPR 2022) | α = 1, β = 8, T = 4 (mdistiller, CIFAR-100) |
| dist | logits: inter- and intra-class Pearson relations (Huang et al., NeurIPS 2022) | β = γ = 1, τ = 1 (official code) |
| at | stage 1-4 maps: attention transfer (Zagoruyko & Komodakis, ICLR 2017) | p = 2, β = 1000 (paper, mdistiller) |
| rkd | pooled layer K: distance + angle relations (Park et al., CVPR 2019) | 25 and 50 (paper, mdistiller) |
| emb_cos | pooled layer K: 1 − cos of the L2-normalised embeddings (dense adapter when narrower) | |
| emb_sim | pooled layer K: L2 between the batch's B×B cosine-similarity matrices (CoupleFace / EKD family) | |

Reduction under tf.distribute: per-example terms are averaged over the global batch by the Distiller. A
relational term is computed on the examples one replica sees and added to each of them, so the global
average is the mean over replicas of the per-replica value: what every data-parallel RKD/DIST does. With
one replica it is the batch value; with R replicas it differs (relations within B/R examples).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from keras_kd.distill import losses
from keras_kd.keras import tf

Spec = List[Tuple[str, float]]


class KDLoss:
    """One distillation term: `loss(student_features, teacher_features, labels)` → [batch]."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""                   # what its flags' help starts with
    prefix: ClassVar[str] = ""                  # hyper-parameters come from Config.<prefix>_<field>
    keys: ClassVar[Tuple[str, ...]] = ()        # features read from both networks
    adapter: ClassVar[Optional[str]] = None     # "dense" | "conv1x1": maps the student's keys[0] when narrower
    any_width: ClassVar[bool] = False           # compares maps/embeddings whose widths need not match
    needs_labels: ClassVar[bool] = False        # reads identity labels that index the classification head
    relational: ClassVar[bool] = False          # a batch-level term (see the module docstring)

    def __call__(self, s: Mapping[str, tf.Tensor], t: Mapping[str, tf.Tensor], labels=None) -> tf.Tensor:
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: Any = None) -> "KDLoss":
        """An instance with every field that `cfg` has (as `<prefix>_<field>`) taken from it."""
        kw = {}
        for f in dataclasses.fields(cls):
            key = f"{cls.prefix}_{f.name}" if cls.prefix else f.name
            if cfg is not None and hasattr(cfg, key):
                kw[f.name] = getattr(cfg, key)
        return cls(**kw)


def hp(default: float, help: str, lower_bound: float = 0.0):
    """A hyper-parameter field of a prefixed component: the one place its flag's default and help live."""
    return dataclasses.field(default=default, metadata={"help": help, "lower_bound": lower_bound})


def _broadcast(value, like):
    """A batch-level value added to each of the batch's examples (how relational terms are reduced)."""
    return tf.broadcast_to(value, tf.shape(like)[:1])


@dataclasses.dataclass(frozen=True)
class Soft(KDLoss):
    temperature: float = 3.0
    tau2: bool = False
    name: ClassVar[str] = "soft"
    keys: ClassVar[Tuple[str, ...]] = ("logits",)

    def __call__(self, s, t, labels=None):
        return losses.soft_kd(s["logits"], t["logits"], self.temperature, self.tau2)


class _FeatureL2(KDLoss):
    """‖S − T‖² on the one feature named by `keys` (the paper's logit and hidden targets, FitNet's hint)."""

    def __call__(self, s, t, labels=None):
        key = self.keys[0]
        return losses.mean_sq(s[key], t[key])


@dataclasses.dataclass(frozen=True)
class Logits(_FeatureL2):
    name: ClassVar[str] = "logits"
    keys: ClassVar[Tuple[str, ...]] = ("logits",)


@dataclasses.dataclass(frozen=True)
class Hidden(_FeatureL2):
    name: ClassVar[str] = "hidden"
    keys: ClassVar[Tuple[str, ...]] = ("hidden",)
    adapter: ClassVar[Optional[str]] = "dense"


@dataclasses.dataclass(frozen=True)
class Hint(_FeatureL2):
    """FitNet's hint: the classify plan's `fitnet_hint` stage trains on it alone (`--methods=fitnet`
    adds it to the task loss in one stage instead, as mdistiller's FitNet does)."""

    name: ClassVar[str] = "hint"
    keys: ClassVar[Tuple[str, ...]] = ("hint",)
    adapter: ClassVar[Optional[str]] = "conv1x1"


@dataclasses.dataclass(frozen=True)
class DKD(KDLoss):
    alpha: float = hp(1.0, "weight of the target-class term (TCKD).")
    beta: float = hp(8.0, "weight of the non-target-class term (NCKD).")
    temperature: float = hp(4.0, "temperature.", lower_bound=0.01)
    name: ClassVar[str] = "dkd"
    title: ClassVar[str] = "DKD"
    prefix: ClassVar[str] = "dkd"
    keys: ClassVar[Tuple[str, ...]] = ("logits",)
    needs_labels: ClassVar[bool] = True

    def __call__(self, s, t, labels=None):
        if labels is None:
            raise ValueError("dkd needs identity labels (targets['label'])")
        return losses.dkd(s["logits"], t["logits"], labels, self.alpha, self.beta, self.temperature)


@dataclasses.dataclass(frozen=True)
class DIST(KDLoss):
    beta: float = hp(1.0, "weight of the inter-class relation.")
    gamma: float = hp(1.0, "weight of the intra-class relation.")
    tau: float = hp(1.0, "temperature.", lower_bound=0.01)
    name: ClassVar[str] = "dist"
    title: ClassVar[str] = "DIST"
    prefix: ClassVar[str] = "dist"
    keys: ClassVar[Tuple[str, ...]] = ("logits",)
    relational: ClassVar[bool] = True  # the intra-class term

    def __call__(self, s, t, labels=None):
        return losses.dist(s["logits"], t["logits"], self.beta, self.gamma, self.tau)


AT_STAGES = ("stage1", "stage2", "stage3", "stage4")


@dataclasses.dataclass(frozen=True)
class AT(KDLoss):
    p: float = hp(2.0, "attention = mean over channels of |F|^p.", lower_bound=0.5)
    beta: float = hp(1000.0, "scale of the term (the paper's β).")
    name: ClassVar[str] = "at"
    title: ClassVar[str] = "Attention transfer"
    prefix: ClassVar[str] = "at"
    keys: ClassVar[Tuple[str, ...]] = AT_STAGES  # every stage's output, as mdistiller's feats[1:]
    any_width: ClassVar[bool] = True

    def __call__(self, s, t, labels=None):
        return self.beta * losses.attention_transfer([s[k] for k in self.keys], [t[k] for k in self.keys],
                                                     self.p)


@dataclasses.dataclass(frozen=True)
class RKD(KDLoss):
    distance_weight: float = hp(25.0, "weight of the distance term.")
    angle_weight: float = hp(50.0, "weight of the angle term.")
    name: ClassVar[str] = "rkd"
    title: ClassVar[str] = "RKD"
    prefix: ClassVar[str] = "rkd"
    keys: ClassVar[Tuple[str, ...]] = ("hidden",)  # the pooled features (mdistiller's pooled_feat)
    any_width: ClassVar[bool] = True
    relational: ClassVar[bool] = True

    def __call__(self, s, t, labels=None):
        value = losses.rkd(s["hidden"], t["hidden"], self.distance_weight, self.angle_weight)
        return _broadcast(value, s["hidden"])


@dataclasses.dataclass(frozen=True)
class EmbCos(KDLoss):
    """Face embeddings are compared by cosine: match the direction of K, leave its norm free."""

    name: ClassVar[str] = "emb_cos"
    keys: ClassVar[Tuple[str, ...]] = ("hidden",)
    adapter: ClassVar[Optional[str]] = "dense"  # the projection when the student is narrower

    def __call__(self, s, t, labels=None):
        return losses.embedding_cosine(s["hidden"], t["hidden"])


@dataclasses.dataclass(frozen=True)
class EmbSim(KDLoss):
    """The teacher's pairwise cosine geometry over the batch (what verification measures); any width."""

    name: ClassVar[str] = "emb_sim"
    keys: ClassVar[Tuple[str, ...]] = ("hidden",)
    any_width: ClassVar[bool] = True
    relational: ClassVar[bool] = True

    def __call__(self, s, t, labels=None):
        return _broadcast(losses.similarity_matrix(s["hidden"], t["hidden"]), s["hidden"])


# Appended in this order: terms of a spec come in registry order, so existing spec names keep theirs.
REGISTRY: Dict[str, type] = {c.name: c for c in (Soft, Logits, Hidden, Hint, DKD, DIST, AT, RKD, EmbCos, EmbSim)}
ALIASES = {"fitnet": "hint"}
NONE = "none"  # a method spec meaning "no distillation term" (the task loss alone: the control)
PAPER = ("soft", "hidden")  # the paper's Eq. 5 terms: their weights are α and β


def create(name: str, cfg: Any = None) -> KDLoss:
    """The component registered as `name` (or its alias), configured from `cfg` (a Config) when given."""
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise ValueError(f"unknown distillation target {name!r}; choose from {', '.join(choices())}")
    return REGISTRY[name].from_config(cfg)


def settings(name: str, cfg: Any) -> Dict[str, Any]:
    """The Config fields a component reads (`--<prefix>_<field>`), by field name: what a stage trained with it
    records, so that a change of, say, --dkd_beta is not reused as the same stage."""
    cls = REGISTRY[ALIASES.get(name, name)]
    keys = (f"{cls.prefix}_{f.name}" if cls.prefix else f.name for f in dataclasses.fields(cls))
    return {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}


def hyperparameters() -> List[Tuple[str, float, str, float]]:
    """(flag name, default, help, lower bound) of every prefixed component's fields: main.py's
    `--<prefix>_<field>` flags, and the Config fields they set."""
    return [(f"{c.prefix}_{f.name}", f.default, f"{c.title}: {f.metadata['help']}", f.metadata["lower_bound"])
            for c in REGISTRY.values() if c.prefix for f in dataclasses.fields(c)]


def choices() -> List[str]:
    return list(REGISTRY) + list(ALIASES)


def parse_kd(spec: str) -> Spec:
    """'soft:1.0,hidden:0.5' (or with '+') → [('soft', 1.0), ('hidden', 0.5)].

    Weight 1 when omitted; 0-weights dropped; 'none' alone is the empty loss. Aliases become their
    registry name and terms come in registry order, so one loss has one spec_name. Unknown names, weights that are not finite non-negative numbers, and a name given twice
    raise ValueError naming the culprit.
    """
    out: Spec = []
    parts = [p.strip() for p in spec.replace("+", ",").split(",")]
    parts = [p for p in parts if p]
    if parts == [NONE]:
        return out
    for part in parts:
        name, _, w = part.partition(":")
        name = ALIASES.get(name.strip(), name.strip())
        if name not in REGISTRY:
            raise ValueError(f"unknown distillation target {name!r}; choose from {', '.join(choices())}"
                             f" (or {NONE} alone)")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise ValueError(f"{part!r}: the weight after ':' must be a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{part!r}: the weight must be a finite number ≥ 0")
        if any(n == name for n, _ in out):
            raise ValueError(f"{spec!r}: {name!r} is given twice")
        if weight:
            out.append((name, weight))
    order = list(REGISTRY)
    return sorted(out, key=lambda nw: order.index(nw[0]))  # one name per loss, however it was written


def _w(weight: float) -> str:
    return f"{weight:g}".replace(".", "p")


def spec_name(targets: Sequence[Tuple[str, float]]) -> str:
    """A filesystem-safe name of a weighted loss: 'soft', 'soft_at', 'dkd0p5_at2'; 'none' when empty."""
    if not targets:
        return NONE
    return "_".join(n if w == 1 else f"{n}{_w(w)}" for n, w in targets)


def paper_name(targets: Sequence[Tuple[str, float]]) -> Optional[str]:
    """'a{α}b{β}' when the loss is made of the paper's terms only (the transfer stages' names), else None."""
    weights = dict(targets)
    if set(weights) - set(PAPER):
        return None
    return f"a{weights.get('soft', 0):g}b{weights.get('hidden', 0):g}"
