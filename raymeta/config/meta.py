"""The ``meta`` and ``optim`` sections: the meta-algorithm, its inner loop and base learners (the
prototype metric, ridge, the SVM, MetaOptNet's heads), how the task mixture moves, and the outer
optimizer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import Algorithm, AliasedModel, StrictModel
from .tasks import EpisodeConfig

__all__ = [
    "FaultInjection",
    "LabelPriorConfig",
    "ProtoConfig",
    "RidgeConfig",
    "SvmConfig",
    "MetaOptConfig",
    "WeightingConfig",
    "MetaConfig",
    "OptimConfig",
]


class FaultInjection(StrictModel):
    """Debugging and testing only, never set by default: poison one task's gradient (one element
    set to NaN or Inf, on its actor, after the gradient is computed) at the given steps, so that
    ``meta.nan_policy`` can be exercised end to end, through the actors and the all-reduce."""

    task: str  # a task name, or a replica key such as "ner#1"
    steps: list[int] = Field(min_length=1)
    value: Literal["nan", "inf"] = "nan"


class LabelPriorConfig(StrictModel):
    """Each class's name, embedded by the same encoder, as one more support point of its prototype,
    weighted λ: p_c = (Σ_{x ∈ S_c} f(x) + λ·f(name_c)) / (|S_c| + λ)
    (:func:`raymeta.core.base_learners.prototypes`).

    A prior from label semantics, as in LaSAML (Luo et al., Findings of ACL 2021), which uses the
    label names in ProtoNet's support set, and in SetFit-style zero-shot set-ups; with K = 0 the
    names alone are the prototypes (a zero-shot classifier). λ = 0 gives today's prototypes bit for
    bit. ``template`` makes the text embedded for a name (e.g. "This is about {name}.")."""

    weight: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    template: str = "{name}"

    @field_validator("template")
    @classmethod
    def _one_name(cls, v: str) -> str:
        try:
            v.format(name="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"must contain {{name}} and no other field ({e})") from None
        if "{name}" not in v:
            raise ValueError("must contain {name}")
        return v


class ProtoConfig(StrictModel):
    """The prototype metric of ``protonet`` and of the MAML family's episode head (Proto-MAML).

    logits = -d(q, p) / temperature, with d the squared Euclidean distance (Snell et al. 2017), or
    logits = cos(q, p) / temperature (cosine; a scaled cosine classifier, Chen et al. 2019, Oreshkin
    et al. 2018's metric scaling). The temperature is configured, not learned: a learned one would
    be a shared parameter in the flat layout.

    The default, squared Euclidean distances / 10, was chosen by measurement on validation tasks
    (configs/proto_metric.yaml, benchmarks/results/protonet-metric.md). In the
    benchmarks/results/heldout-tasks.md set-up, meta-training with it raised the validation score of
    ProtoNet from 59.7 (step 0) to 64.5 and of FOMAML to 64.7; with the unscaled metric (temperature
    1, Snell et al.'s) or cosine / 0.1, meta-training only lowered it (best step 0, or +0.1). Why:
    the squared distances between MiniLM's pooled embeddings are about 33 to 60 (10th-90th
    percentile, HuffPost), so unscaled logits saturate the softmax, while / 10 puts their gaps in
    its working range. Scored with cosine prototypes instead, the same runs rank the same way, but
    the pretrained model already reaches 65.2 there (the / 10 ProtoNet run: 65.4): most of what it
    gains is a better fit to the Euclidean prototype classifier."""

    distance: Literal["euclidean", "cosine"] = "euclidean"
    temperature: float = Field(default=10.0, gt=0.0)
    # label names as prior support points of their class's prototype (LabelPriorConfig); None:
    # today's prototypes
    label_prior: LabelPriorConfig | None = None

    @property
    def prior_weight(self) -> float:
        """λ of ``label_prior`` (0 without one)."""
        return self.label_prior.weight if self.label_prior is not None else 0.0

    @property
    def prior_template(self) -> str | None:
        """The template an episode's label names are made with (None without a prior of weight > 0:
        no names)."""
        return (self.label_prior.template
                if self.label_prior is not None and self.label_prior.weight > 0 else None)


class RidgeConfig(AliasedModel):
    """The ridge-regression classifier of an embedding space (``--method ridge``, ``method: ridge``
    in episodes): W = Xᵀ(XXᵀ + λI)⁻¹Y over the support embeddings X and one-hot labels Y (Bertinetto
    et al. 2019). The default λ was chosen on validation classes (HuffPost 20-24, plain MiniLM,
    benchmarks/results/metaoptnet.md); it depends on the embeddings' scale (MiniLM's pooled
    embeddings have norms of about 5)."""

    lam: float = Field(default=30.0, gt=0.0, alias="lambda")


class SvmConfig(AliasedModel):
    """The Crammer-Singer multi-class SVM of an embedding space (``--method svm``), C = 1/λ, solved
    in the dual by ``iterations`` accelerated projected-gradient steps
    (:func:`raymeta.core.base_learners.svm_weights`). λ: as for
    :class:`RidgeConfig` (benchmarks/results/metaoptnet.md)."""

    lam: float = Field(default=30.0, gt=0.0, alias="lambda")
    iterations: int = Field(default=100, ge=1)


class MetaOptConfig(AliasedModel):
    """``meta.algorithm: metaopt`` (Lee et al. 2019, MetaOptNet): each episode fits a linear
    classifier to the support embeddings in closed form (``head: ridge``, R2D2's dual form) or by a
    differentiable solve (``head: svm``, Crammer and Singer's multi-class SVM, C = 1/λ), and the
    query cross-entropy of ``scale`` × its logits is back-propagated through that solve into the
    encoder. ``learn_scale``: each task learns its own scale (a task-head parameter, stepped by the
    actor's head optimizer; MetaOptNet learns one), starting from ``scale``."""

    head: Literal["ridge", "svm"] = "ridge"
    # eval.ridge's (benchmarks/results/metaoptnet.md)
    lam: float = Field(default=30.0, gt=0.0, alias="lambda")
    scale: float = Field(default=10.0, gt=0.0)
    learn_scale: bool = False
    # svm: unrolled solver steps (required with head: svm)
    iterations: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _svm_has_a_solver(self) -> "MetaOptConfig":
        if self.head == "svm" and self.iterations is None:
            raise ValueError("head: svm needs a solver setting: iterations (unrolled dual solver "
                             "steps, e.g. 50)")
        return self


class WeightingConfig(StrictModel):
    """How the task mixture moves during meta-training (:mod:`raymeta.core.weighting`). ``fixed``:
    the configured weights throughout. ``alignment``: each task's log-weight follows the cosine
    between its gradient and the target tasks' gradient, zᵢ ← zᵢ + lr·cos(gᵢ, g_target) every
    ``every_steps``, and w = (1 − floor)·softmax(z / λ + log w_config) + floor/N (Dery et al. 2022;
    Xie et al. 2023's ε-uniform floor), with λ ≥ 1 the smallest temperature that keeps
    KL(w ‖ w_config) ≤ ``max_kl`` (:mod:`raymeta.core.weighting`).

    ``max_kl`` defaults to log 2: with equal configured weights that is the entropy floor
    H(w) ≥ log(N/2), a mixture worth at least half its tasks (exp H ≥ N/2). The learned weights may
    drop half the tasks, or lean on a few, but never collapse onto one; without the bound, the tuned
    step size of configs/recipes/general_alignment.yaml put 0.99 on one task within 7 steps and
    flipped to another at step 40 (benchmarks/results/learned-weights.md#stability). None: no bound
    (the runs measured before the bound existed)."""

    rule: Literal["fixed", "alignment"] = "fixed"
    # the target tasks ({use: NAME} entries or task dicts; classification), class-disjoint from
    # every meta-training and test task by the rule eval.validation follows. None:
    # eval.validation.tasks
    target: list[dict[str, Any]] | None = None
    # g_target: the mean over these K
    shots: list[int] = Field(default_factory=lambda: [1, 5], min_length=1)
    every_steps: int = Field(default=1, ge=1)
    lr: float = Field(default=1.0, ge=0.0)  # η
    floor: float = Field(default=0.0, ge=0.0)  # ε, at most 1/N (checked against the tasks)
    # B: KL(w ‖ w_config) ≤ B nats; the entropy floor log N − B for equal configured weights
    max_kl: float | None = Field(default=0.6931471805599453, ge=0.0, allow_inf_nan=False)

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"every K must be at least 1 (got {v})")
        return v


class MetaConfig(StrictModel):
    """The meta-algorithm and its inner loop (Finn et al. 2017; Nichol et al. 2018)."""

    algorithm: Algorithm = "protonet"
    steps: int = Field(default=100, ge=1)
    inner_steps: int = Field(default=1, ge=0)
    inner_lr: float = Field(default=1e-3, gt=0.0)
    episode: EpisodeConfig = Field(default_factory=EpisodeConfig)
    # protonet's metric, and the Proto-MAML head's
    proto: ProtoConfig = Field(default_factory=ProtoConfig)
    # algorithm: metaopt's base learner
    metaopt: MetaOptConfig = Field(default_factory=MetaOptConfig)
    combine: Literal["mean", "pcgrad"] = "mean"
    # Where Σ wᵢ gᵢ is formed: the driver gathers every task gradient, or the actors all-reduce
    # among themselves. auto: raymeta.core.reduce_choice.default_reduce picks from the number of
    # task actors, the trainable parameters and where the actors run
    # (benchmarks/results/overlap-cost-model.md); the trainer logs its choice and saves it in
    # config.yaml.
    reduce: Literal["auto", "driver", "collective"] = "auto"
    # Hide the exchange behind the compute (benchmarks/results/overlap-cost-model.md): under
    # collective, each bucket of the task gradient is all-reduced from an autograd hook as soon as
    # the backward pass has produced it (as DDP does); under driver, the driver adds each task's
    # gradient as soon as every earlier one (in task order) has arrived. The same sums either way;
    # false: wait for the whole gradient / every task first.
    overlap: bool = True
    # reduce: collective, overlap: the size of one all-reduce (DDP's)
    bucket_mb: float = Field(default=25.0, gt=0.0)
    # the mixture: fixed, or learned (alignment)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    # The meta-batch: how many tasks compute a gradient at each step, drawn by (seed, step) in
    # proportion to the mixture (stratified when the weights are equal), the meta-gradient their
    # mean (raymeta.core.task_sampling). None, or at least the number of tasks: every task every
    # step. Under reduce: collective the tasks not drawn join the all-reduce with a zero gradient,
    # and meta.overlap is off (every rank must all-reduce the same buckets).
    task_batch: int | None = Field(default=None, ge=1)
    nan_policy: Literal["skip_task", "abort"] = "skip_task"
    # reduce: driver: the dtype task gradients travel in (the driver reduces in float32 either way).
    # bfloat16 halves the bytes per actor; it rounds each gradient to 8 significant bits.
    transfer_dtype: Literal["float32", "bfloat16"] = "float32"
    # Debugging and testing only, off by default: see FaultInjection.
    fault_injection: FaultInjection | None = None


class OptimConfig(StrictModel):
    """Outer optimizer: AdamW, linear warm-up then cosine decay, global-norm clipping."""

    lr: float = Field(default=2e-5, gt=0.0)
    head_lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=10, ge=0)
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0.0)
