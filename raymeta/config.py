"""The one typed experiment schema, and its layered loader.

Layers, later wins: schema defaults -> YAML file -> ``key=value`` dotted overrides.
The checks are pydantic's (``extra="forbid"``, so an unknown key is an error); every
failure is re-raised as a one-line :class:`~raymeta.errors.ConfigError` naming the key.
The fully resolved config is written next to every run's outputs (:func:`save_config`).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from .catalog import config_file, resolve_task_entry
from .errors import ConfigError

__all__ = [
    "TASK_TYPES",
    "ALGORITHMS",
    "EVAL_METHODS",
    "SourceConfig",
    "EpisodeConfig",
    "TaskConfig",
    "ProtoConfig",
    "WeightingConfig",
    "LoraConfig",
    "ModelConfig",
    "FaultInjection",
    "MetaConfig",
    "OptimConfig",
    "ResourcesConfig",
    "CheckpointConfig",
    "EarlyStopping",
    "EpisodicSizes",
    "EpisodicProtocol",
    "ValidationSetting",
    "ValidationConfig",
    "SetfitConfig",
    "EvalConfig",
    "BenchmarkConfig",
    "TuneSpaceConfig",
    "TuneConfig",
    "ExperimentConfig",
    "load_config",
    "parse_overrides",
    "apply_overrides",
    "save_config",
    "redact",
    "is_secret_key",
]

TaskType = Literal["sequence_classification", "token_classification", "extractive_qa", "multiple_choice"]
Algorithm = Literal["multitask", "fomaml", "reptile", "maml", "anil", "protonet", "metaopt"]
TASK_TYPES: tuple[str, ...] = TaskType.__args__  # type: ignore[attr-defined]
ALGORITHMS: tuple[str, ...] = Algorithm.__args__  # type: ignore[attr-defined]
# A classifier fitted to frozen embeddings of a support set, without training the encoder
# (raymeta.core.base_learners): the nearest class mean (Snell et al. 2017), ridge regression (Bertinetto et al. 2019)
# or the Crammer-Singer multi-class SVM (Lee et al. 2019's MetaOptNet heads).
EmbeddingClassifier = Literal["prototype", "ridge", "svm"]
EMBEDDING_CLASSIFIERS: tuple[str, ...] = EmbeddingClassifier.__args__  # type: ignore[attr-defined]
# How an init is scored on a K-shot split: fine-tuning (raymeta.eval.finetune), an embedding classifier without
# training (raymeta.eval.frozen) or SetFit (raymeta.eval.setfit, Tunstall et al. 2022).
EvalMethod = Literal["finetune", "prototype", "ridge", "svm", "setfit"]
EVAL_METHODS: tuple[str, ...] = EvalMethod.__args__  # type: ignore[attr-defined]

DEFAULT_DATA_DIR = "../shared/data"


class _Strict(BaseModel):
    # forbid: an unknown key is an error; validate_assignment: overrides set later stay checked.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Strict):
    """Where a task's raw rows come from: a hub dataset, local files, a built-in corpus, or SMLMT
    (self-supervised word classification over other sources' text; :mod:`raymeta.tasks.smlmt`)."""

    kind: Literal["hub", "files", "builtin", "smlmt"]
    # hub
    dataset: str | None = None
    config_name: str | None = None
    revision: str | None = None
    # files: split name -> one path or a list of paths; ``${data_dir}`` is substituted.
    format: Literal[
        "csv", "tsv", "json", "jsonl", "parquet", "conll", "squad", "clinc", "trec", "fewrel"
    ] | None = None
    files: dict[str, str | list[str]] = Field(default_factory=dict)
    read_options: dict[str, Any] = Field(default_factory=dict)
    # files: the folder a relative path in ``files`` starts from. Set when a task YAML (or an experiment config's
    # inline task) is read: the folder of that file. None: the current directory. ``${data_dir}`` and absolute
    # paths ignore it. Left out of dumps when None, so configs (and cache keys) without it read as before.
    base_dir: str | None = None
    # builtin
    name: str | None = None
    # all kinds: canonical split (train/validation/test) -> source split name
    splits: dict[str, str] = Field(default_factory=dict)
    # Carve a test split out of train when the source has none (seeded, deterministic).
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    split_seed: int = 0
    max_rows: int | None = Field(default=None, gt=0)
    # smlmt (Bansal et al. 2020): the text to read (written ``from:``): ready-made task names, task YAML files,
    # or task entries ({use: NAME, ...} or {source: {...}, columns: {text: COL}}); their train splits' text.
    corpus: list[str | dict[str, Any]] = Field(default_factory=list, validation_alias=AliasChoices("from", "corpus"))
    vocab_size: int = Field(default=1000, ge=2)  # the most frequent eligible words become the classes
    min_count: int = Field(default=10, ge=1)  # a word must occur in at least this many distinct sentences
    max_sentences_per_word: int = Field(default=50, ge=1)  # rows per word (a seeded subsample beyond it)
    min_word_length: int = Field(default=3, ge=1)
    sentence_words: tuple[int, int] = (4, 64)  # sentences outside this range of words are skipped
    exclude_words: list[str] = Field(default_factory=list)  # on top of scikit-learn's English stop words
    placeholder: str = Field(default="___", min_length=1)  # replaces the word when the tokenizer has no mask token
    # which words an episode asks about: uniform, or with probability ∝ log(1 + sentences with the word)
    sampling: Literal["uniform", "log_frequency"] = "uniform"

    @model_serializer(mode="wrap")
    def _drop_unset_base_dir(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("base_dir") is None:
            data.pop("base_dir", None)
        return data

    @model_validator(mode="after")
    def _kind_fields(self) -> "SourceConfig":
        need = {"hub": "dataset", "files": "format", "builtin": "name", "smlmt": "corpus"}[self.kind]
        if getattr(self, need) in (None, "", []):
            raise ValueError(f"source kind '{self.kind}' needs '{'from' if need == 'corpus' else need}'")
        if self.kind == "files" and not self.files:
            raise ValueError("source kind 'files' needs 'files' (split -> path)")
        return self


class EpisodeConfig(_Strict):
    """Support/query sizes of one episode (Vinyals et al. 2016's N-way K-shot protocol)."""

    ways: int | None = Field(default=5, ge=2)  # classification: None = every class
    # classification: support examples per class (0, zero-shot from label names, in evaluation only)
    shots: int = Field(default=5, ge=0)
    queries: int = Field(default=5, ge=1)  # classification: query examples per class
    support_size: int = Field(default=8, ge=1)  # other task types: examples in the support set
    query_size: int = Field(default=8, ge=1)


class TaskConfig(_Strict):
    """A task: a name, a type, a source, a column mapping and a label set."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    type: TaskType
    source: SourceConfig
    description: str = ""
    # canonical column -> source column (e.g. {text: sentence}); unmapped ones keep their name
    columns: dict[str, str | list[str]] = Field(default_factory=dict)
    labels: list[str] | None = None  # None: every label seen in the train split, sorted
    include_labels: list[str] | None = None  # keep only these classes (class-disjoint meta-splits)
    # label -> its name in words ({card_arrival: "card arrival"}), read by meta.proto.label_prior and evaluate
    # --label-prior; or a JSON file of that mapping (``${data_dir}`` substituted; a value may be a list, [name,
    # description, ...], as FewRel's pid2name.json: its first item). Without it each label is named by itself,
    # underscores as spaces, lower case (raymeta.tasks.label_name). It must name every label, and only labels.
    label_names: dict[str, str] | str | None = None
    max_length: int = Field(default=128, ge=8, le=8192)
    stride: int = Field(default=64, ge=0)  # extractive_qa: overlap between context windows
    weight: float = Field(default=1.0, ge=0.0)  # mixture weight (normalised by the trainer)
    episode: EpisodeConfig | None = None  # None: the experiment's meta.episode
    # custom Ray resources this task's actor needs, e.g. {nodeB: 1} or {accelerator_type:A100: 0.01}
    resources: dict[str, float] = Field(default_factory=dict)
    # data parallelism within the task: this many actors, each on its own episodes; their gradients
    # (and head gradients) are averaged before the mixture weighting
    replicas: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _smlmt_type(self) -> "TaskConfig":
        # SMLMT rows are ordinary classification rows whose classes are words: nothing above tasks/ changes.
        if self.source.kind == "smlmt" and self.type != "sequence_classification":
            raise ValueError(f"source kind 'smlmt' makes a sequence_classification task, not {self.type}")
        return self

    @field_validator("weight")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("labels", "include_labels", mode="before")
    @classmethod
    def _labels_as_str(cls, v: Any) -> Any:
        # YAML gives ints for numeric labels (SST-2's 0/1); labels are compared as strings.
        if isinstance(v, list):
            return [str(x) for x in v]
        return v

    @field_validator("label_names", mode="before")
    @classmethod
    def _names_as_str(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): str(x) if isinstance(x, (int, float)) else x for k, x in v.items()}
        return v

    @field_validator("label_names")
    @classmethod
    def _names_not_blank(cls, v: dict[str, str] | str | None) -> dict[str, str] | str | None:
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("expected a mapping label -> name, or a JSON file of one")
            return v
        for k, name in (v or {}).items():
            if not name.strip():
                raise ValueError(f"label '{k}' has an empty name")
        return v


class LoraConfig(_Strict):
    """LoRA adapters (Hu et al. 2022) through Hugging Face ``peft``: W + (alpha/r)·B·A with B = 0 at
    the start, so step 0 is the pretrained model exactly."""

    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0.0)
    # 0 by default: with dropout the adapters draw random numbers in training mode, which shifts every later
    # dropout mask of the encoder away from the pretrained model's (and it is a regulariser few-shot runs rarely need).
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # None: the family's default (BERT-like: query, key, value, dense; GPT-2: c_attn, c_proj; others: peft's table)
    target_modules: list[str] | None = Field(default=None, min_length=1)


class ModelConfig(_Strict):
    """The shared encoder (``AutoModel``) and how heads read it."""

    name_or_path: str = "offline:all-MiniLM-L6-v2"
    tokenizer: str | None = None  # default: name_or_path
    revision: str | None = None
    trust_remote_code: bool = False  # security: never on unless asked for
    # Build a randomly initialised model from this config dict instead of loading weights
    # (e.g. {model_type: bert, hidden_size: 32, ...}); used by tests and benchmarks.
    from_config: dict[str, Any] | None = None
    pooling: Literal["mean", "cls", "last"] | None = None  # None: mean for encoders, last for GPT-style
    head_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    # Which encoder parameters are meta-learned (the rest stay the pretrained ones and never travel):
    # full: all; lora: LoRA adapters only (model.lora); top_layers: the top model.top_layers transformer layers.
    trainable: Literal["full", "lora", "top_layers"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    top_layers: int | None = Field(default=None, ge=1)  # with trainable: top_layers
    train_norms: bool = False  # lora / top_layers: also train every LayerNorm (weight and bias)

    @model_validator(mode="after")
    def _trainable_fields(self) -> "ModelConfig":
        if self.trainable == "top_layers" and self.top_layers is None:
            raise ValueError("trainable: top_layers needs model.top_layers (how many of the top layers train)")
        return self


class FaultInjection(_Strict):
    """Debugging and testing only, never set by default: poison one task's gradient (one element
    set to NaN or Inf, on its actor, after the gradient is computed) at the given steps, so that
    ``meta.nan_policy`` can be exercised end to end, through the actors and the all-reduce."""

    task: str  # a task name, or a replica key such as "ner#1"
    steps: list[int] = Field(min_length=1)
    value: Literal["nan", "inf"] = "nan"


class LabelPriorConfig(_Strict):
    """Each class's name, embedded by the same encoder, as one more support point of its prototype, weighted λ:
    p_c = (Σ_{x ∈ S_c} f(x) + λ·f(name_c)) / (|S_c| + λ) (:func:`raymeta.core.base_learners.prototypes`).

    A prior from label semantics, as in LaSAML (Luo et al., Findings of ACL 2021), which uses the label names
    in ProtoNet's support set, and in SetFit-style zero-shot set-ups; with K = 0 the names alone are the
    prototypes (a zero-shot classifier). λ = 0 gives today's prototypes bit for bit. ``template`` makes the text
    embedded for a name (e.g. "This is about {name}.")."""

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


class ProtoConfig(_Strict):
    """The prototype metric of ``protonet`` and of the MAML family's episode head (Proto-MAML).

    logits = -d(q, p) / temperature, with d the squared Euclidean distance (Snell et al. 2017), or
    logits = cos(q, p) / temperature (cosine; a scaled cosine classifier, Chen et al. 2019, Oreshkin et
    al. 2018's metric scaling). The temperature is configured, not learned: a learned one would be a shared
    parameter in the flat layout.

    The default, squared Euclidean distances / 10, was chosen by measurement on validation tasks
    (configs/proto_metric.yaml, benchmarks/RESULTS.md §9). In the §1 set-up, meta-training with it raised the
    validation score of ProtoNet from 59.7 (step 0) to 64.5 and of FOMAML to 64.7; with the unscaled metric
    (temperature 1, Snell et al.'s) or cosine / 0.1, meta-training only lowered it (best step 0, or +0.1). Why: the
    squared distances between MiniLM's pooled embeddings are about 33 to 60 (10th-90th percentile, HuffPost),
    so unscaled logits saturate the softmax, while / 10 puts their gaps in its working range. Scored with cosine
    prototypes instead, the same runs rank the same way, but the pretrained model already reaches 65.2 there (the
    / 10 ProtoNet run: 65.4): most of what it gains is a better fit to the Euclidean prototype classifier."""

    distance: Literal["euclidean", "cosine"] = "euclidean"
    temperature: float = Field(default=10.0, gt=0.0)
    # label names as prior support points of their class's prototype (LabelPriorConfig); None: today's prototypes
    label_prior: LabelPriorConfig | None = None

    @property
    def prior_weight(self) -> float:
        """λ of ``label_prior`` (0 without one)."""
        return self.label_prior.weight if self.label_prior is not None else 0.0

    @property
    def prior_template(self) -> str | None:
        """The template an episode's label names are made with (None without a prior of weight > 0: no names)."""
        return self.label_prior.template if self.label_prior is not None and self.label_prior.weight > 0 else None


class _Aliased(_Strict):
    # ``lambda`` is a Python keyword: the field is ``lam``, read and written as ``lambda``.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_by_name=True, serialize_by_alias=True)


class RidgeConfig(_Aliased):
    """The ridge-regression classifier of an embedding space (``--method ridge``, ``method: ridge`` in episodes):
    W = Xᵀ(XXᵀ + λI)⁻¹Y over the support embeddings X and one-hot labels Y (Bertinetto et al. 2019). The default λ
    was chosen on validation classes (HuffPost 20-24, plain MiniLM, benchmarks/RESULTS.md §11); it depends on the
    embeddings' scale (MiniLM's pooled embeddings have norms of about 5)."""

    lam: float = Field(default=30.0, gt=0.0, alias="lambda")


class SvmConfig(_Aliased):
    """The Crammer-Singer multi-class SVM of an embedding space (``--method svm``), C = 1/λ, solved in the dual by
    ``iterations`` accelerated projected-gradient steps (:func:`raymeta.core.base_learners.svm_weights`). λ: as for
    :class:`RidgeConfig` (benchmarks/RESULTS.md §11)."""

    lam: float = Field(default=30.0, gt=0.0, alias="lambda")
    iterations: int = Field(default=100, ge=1)


class MetaOptConfig(_Aliased):
    """``meta.algorithm: metaopt`` (Lee et al. 2019, MetaOptNet): each episode fits a linear classifier to the
    support embeddings in closed form (``head: ridge``, R2D2's dual form) or by a differentiable solve (``head:
    svm``, Crammer and Singer's multi-class SVM, C = 1/λ), and the query cross-entropy of ``scale`` × its logits is
    back-propagated through that solve into the encoder. ``learn_scale``: each task learns its own scale (a task-head
    parameter, stepped by the actor's head optimizer; MetaOptNet learns one), starting from ``scale``."""

    head: Literal["ridge", "svm"] = "ridge"
    lam: float = Field(default=30.0, gt=0.0, alias="lambda")  # eval.ridge's (benchmarks/RESULTS.md §11)
    scale: float = Field(default=10.0, gt=0.0)
    learn_scale: bool = False
    iterations: int | None = Field(default=None, ge=1)  # svm: unrolled solver steps (required with head: svm)

    @model_validator(mode="after")
    def _svm_has_a_solver(self) -> "MetaOptConfig":
        if self.head == "svm" and self.iterations is None:
            raise ValueError("head: svm needs a solver setting: iterations (unrolled dual solver steps, e.g. 50)")
        return self


class WeightingConfig(_Strict):
    """How the task mixture moves during meta-training (:mod:`raymeta.core.weighting`). ``fixed``: the configured
    weights throughout. ``alignment``: each task's log-weight follows the cosine between its gradient and the
    target tasks' gradient, zᵢ ← zᵢ + lr·cos(gᵢ, g_target) every ``every_steps``, and
    w = (1 − floor)·softmax(z + log w_config) + floor/N (Dery et al. 2022; Xie et al. 2023's ε-uniform floor)."""

    rule: Literal["fixed", "alignment"] = "fixed"
    # the target tasks ({use: NAME} entries or task dicts; classification), class-disjoint from every meta-training
    # and test task by the rule eval.validation follows. None: eval.validation.tasks
    target: list[dict[str, Any]] | None = None
    shots: list[int] = Field(default_factory=lambda: [1, 5], min_length=1)  # g_target: the mean over these K
    every_steps: int = Field(default=1, ge=1)
    lr: float = Field(default=1.0, ge=0.0)  # η
    floor: float = Field(default=0.0, ge=0.0)  # ε, at most 1/N (checked against the tasks)

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"every K must be at least 1 (got {v})")
        return v


class MetaConfig(_Strict):
    """The meta-algorithm and its inner loop (Finn et al. 2017; Nichol et al. 2018)."""

    algorithm: Algorithm = "protonet"
    steps: int = Field(default=100, ge=1)
    inner_steps: int = Field(default=1, ge=0)
    inner_lr: float = Field(default=1e-3, gt=0.0)
    episode: EpisodeConfig = Field(default_factory=EpisodeConfig)
    proto: ProtoConfig = Field(default_factory=ProtoConfig)  # protonet's metric, and the Proto-MAML head's
    metaopt: MetaOptConfig = Field(default_factory=MetaOptConfig)  # algorithm: metaopt's base learner
    combine: Literal["mean", "pcgrad"] = "mean"
    # Where Σ wᵢ gᵢ is formed: the driver gathers every task gradient, or the actors all-reduce among themselves.
    # auto: raymeta.core.costmodel.default_reduce picks from the number of task actors, the trainable parameters and
    # where the actors run (benchmarks/RESULTS.md §13); the trainer logs its choice and saves it in config.yaml.
    reduce: Literal["auto", "driver", "collective"] = "auto"
    # Hide the exchange behind the compute (benchmarks/RESULTS.md §13): under collective, each bucket of the task
    # gradient is all-reduced from an autograd hook as soon as the backward pass has produced it (as DDP does);
    # under driver, the driver adds each task's gradient as soon as every earlier one (in task order) has arrived.
    # The same sums either way; false: wait for the whole gradient / every task first.
    overlap: bool = True
    bucket_mb: float = Field(default=25.0, gt=0.0)  # reduce: collective, overlap: the size of one all-reduce (DDP's)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)  # the mixture: fixed, or learned (alignment)
    nan_policy: Literal["skip_task", "abort"] = "skip_task"
    # reduce: driver: the dtype task gradients travel in (the driver reduces in float32 either way).
    # bfloat16 halves the bytes per actor; it rounds each gradient to 8 significant bits.
    transfer_dtype: Literal["float32", "bfloat16"] = "float32"
    # Debugging and testing only, off by default: see FaultInjection.
    fault_injection: FaultInjection | None = None


class OptimConfig(_Strict):
    """Outer optimizer: AdamW, linear warm-up then cosine decay, global-norm clipping."""

    lr: float = Field(default=2e-5, gt=0.0)
    head_lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=10, ge=0)
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0.0)


class ResourcesConfig(_Strict):
    """Where actors run. ``None`` means: decide from what the cluster has (:func:`raymeta.runtime.plan_actors`)."""

    address: str | None = None  # None: $RAY_ADDRESS, else a local instance on loopback
    # GPUs per task actor. auto: one whole GPU each when the cluster can provide them: it has a GPU for every actor
    # now, or its autoscaler has a node type with GPUs (the actors then wait for it to add those nodes); on a
    # fixed cluster with fewer GPUs than actors, an equal fraction of them; no GPU anywhere: CPU. 0: CPU, never a
    # GPU. A number: that many GPUs each, whole or a fraction (0.5: two actors share one).
    gpus: Literal["auto"] | float = "auto"
    # CPUs per task actor. None: 1 with a GPU, or on a cluster that can autoscale; else an equal share of the CPUs up.
    num_cpus_per_actor: float | None = Field(default=None, gt=0.0)
    # GPUs per task actor, the older key: when set, it wins over ``gpus``.
    num_gpus_per_actor: float | None = Field(default=None, ge=0.0)
    custom_resources: dict[str, float] = Field(default_factory=dict)
    torch_threads: int | None = Field(default=None, ge=1)
    # How long the task actors may wait to be placed (for an autoscaler to add nodes, or for busy nodes to free
    # up) while none of them is placed and no node joins; then the run stops with one line naming what is
    # missing. A request no node (nor node type of the autoscaler) can ever meet fails at once instead.
    placement_timeout_s: float = Field(default=900.0, gt=0.0)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, v: Any) -> Any:
        if v == "auto":
            return v
        try:
            n = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            n = math.nan
        if not (math.isfinite(n) and n >= 0):
            raise ValueError("expected auto, 0 (CPU) or a number of GPUs per task actor (e.g. 1 or 0.5)")
        return n


class CheckpointConfig(_Strict):
    every_steps: int = Field(default=50, ge=1)
    keep_last: int = Field(default=2, ge=1)
    # A task actor that dies (its process killed, its node lost) is restarted with all the others, and
    # training goes back to the last checkpoint (or step 0) and replays; this many times per run, then
    # the run stops with a one-line error. 0: the first lost actor ends the run.
    max_actor_restarts: int = Field(default=3, ge=0)
    # Export <output_dir>/best: the step (step 0, the starting model, included) that scores highest on
    # eval.validation. None: whenever validation tasks are configured.
    best: bool | None = None


class EarlyStopping(_Strict):
    patience: int = Field(ge=1)  # stop after this many validations in a row without a new best


class EpisodicSizes(_Strict):
    """The episodes of the prototype-accuracy score shared by meta-validation (``eval.validation``) and
    ``raymeta tune``'s trial score (``tune``): seeded N-way K-shot episodes (Vinyals et al. 2016) scored by the
    prototype classifier (Snell et al. 2017) on a fixed seeded subsample of rows. One definition for both, and
    one scorer (:mod:`raymeta.eval.scoring`, with :class:`EpisodicProtocol`), so a Tune trial and ``best`` are
    chosen on the same number."""

    ways: int = Field(default=5, ge=2)  # N-way episodes
    shots: int = Field(default=5, ge=1)  # per class in the support set (eval.validation method finetune: K per class)
    queries: int = Field(default=10, ge=1)  # per class
    episodes: int = Field(default=200, ge=1)  # seeded episodes per task (the same at every score)
    max_rows_per_class: int = Field(default=40, ge=2)  # rows embedded per class (a seeded subsample, fixed)


class EpisodicProtocol(EpisodicSizes):
    """Everything that fixes an episodic prototype score (:func:`raymeta.eval.scoring.protocol` builds it from
    an experiment): the sizes, which rows (``split``), the seed (rows: ``default_rng([seed, 7])`` per task;
    episodes: ``seed``), and the ProtoNet metric of the run (``meta.proto``). ``key`` and ``split_key`` name the
    config keys in error messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Literal["all", "test"] = "all"
    seed: int = 0
    distance: Literal["euclidean", "cosine"] = "euclidean"
    temperature: float = Field(default=1.0, gt=0.0)
    classifier: EmbeddingClassifier = "prototype"  # the episodes' classifier (eval.ridge / eval.svm: its settings)
    ridge: RidgeConfig = Field(default_factory=RidgeConfig)
    svm: SvmConfig = Field(default_factory=SvmConfig)
    # the run's meta.proto.label_prior (λ, template): the prototype classifier's label-name prior; 0: none
    label_prior: float = Field(default=0.0, ge=0.0)
    label_template: str = "{name}"
    key: str = "eval.validation"
    split_key: str = "eval.validation.split"


ValidationMethod = Literal["prototype", "ridge", "svm", "finetune"]
_EPISODIC_ONLY = ("ways", "queries", "episodes")  # setting fields that only episodic methods read


class ValidationSetting(_Strict):
    """One entry of ``eval.validation.settings``: a method and size at which every validated step is scored. An
    unset field is ``eval.validation``'s own (:meth:`ValidationConfig.resolved_settings` fills them in)."""

    method: ValidationMethod | None = None
    ways: int | None = Field(default=None, ge=2)  # prototype / ridge / svm only
    shots: int | None = Field(default=None, ge=1)
    queries: int | None = Field(default=None, ge=1)  # prototype / ridge / svm only
    episodes: int | None = Field(default=None, ge=1)  # prototype / ridge / svm only
    splits: int | None = Field(default=None, ge=1)  # finetune only


class ValidationConfig(EpisodicSizes):
    """Meta-validation during meta-training: which checkpoint adapts best to *new* tasks, chosen on
    validation tasks that are neither meta-trained on nor tested on (never the test tasks). The episode
    fields (ways, shots, queries, episodes, max_rows_per_class) are :class:`EpisodicSizes`, shared with ``tune``."""

    tasks: list[dict[str, Any]] = Field(default_factory=list)  # {use: NAME} entries or task dicts; classification
    # Instead of tasks: hold back this seeded fraction (e.g. 0.2) of each meta-training classification task's classes;
    # meta-training never sees them, validation scores them (raymeta.tasks.holdout; <output_dir>/holdout_classes.json)
    holdout_classes: float | None = Field(default=None, gt=0.0, lt=1.0)
    # episodic accuracy of an embedding classifier (prototype, ridge, svm: eval.ridge / eval.svm), or K-shot fine-tuning
    method: ValidationMethod = "prototype"
    splits: int = Field(default=2, ge=1)  # finetune: seeded K-shot splits per task
    # rows scored: every split of a validation task, or only its test split. "test" allows in-domain selection on
    # a meta-training task's held-back rows (meta-training reads train splits only; prototype method only).
    split: Literal["all", "test"] = "all"
    every_steps: int = Field(default=10, ge=1)  # and at step 0 and at the last step
    early_stopping: EarlyStopping | None = None
    # Score every validated step at several settings, e.g. [{method: prototype, shots: 1}, {method: prototype,
    # shots: 5}, {method: finetune, shots: 8}]: a step that helps at 1 shot can hurt at 5 (benchmarks/RESULTS.md §0,
    # §10.3), which one setting cannot see. Unset fields are the ones above. null: the one setting above.
    settings: list[ValidationSetting] | None = Field(default=None, min_length=1)
    # How best is chosen (raymeta.train.validation). mean: the highest score (with several settings, the mean of
    # the settings' scores). no_harm: the highest mean gain over step 0 among the steps whose paired gain over step 0
    # has a 95% CI lower bound >= -tolerance at every setting (none: step 0). null: no_harm with several settings,
    # else mean (the choice of a single setting as ever).
    select: Literal["mean", "no_harm"] | None = None
    # The loss that no_harm forgives, in the unit of the scores: accuracy as a fraction (0.01 = one point).
    tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)

    @property
    def selection(self) -> Literal["mean", "no_harm"]:
        """``select``, resolved: no_harm with more than one setting, else mean."""
        if self.select is not None:
            return self.select
        return "no_harm" if self.settings is not None and len(self.settings) > 1 else "mean"

    def resolved_settings(self) -> list[ValidationSetting]:
        """Every setting with every field filled in from this section (without ``settings``: the one setting of
        this section's own fields)."""
        base = {"method": self.method, "ways": self.ways, "shots": self.shots, "queries": self.queries,
                "episodes": self.episodes, "splits": self.splits}
        return [ValidationSetting(**{**base, **s.model_dump(exclude_none=True)}) for s in self.settings or [ValidationSetting()]]

    def setting_names(self) -> list[str]:
        """Each resolved setting's name in records, metrics.jsonl and TensorBoard tags: ``prototype_5w1s``,
        ``finetune_8s``, with ``_q<queries>``, ``_e<episodes>`` (``_x<splits>``) where those differ from this
        section's own (two distinct settings never share a name)."""
        names = []
        for s in self.resolved_settings():
            if s.method == "finetune":
                name = f"finetune_{s.shots}s" + (f"_x{s.splits}" if s.splits != self.splits else "")
            else:
                name = f"{s.method}_{s.ways}w{s.shots}s" + (f"_q{s.queries}" if s.queries != self.queries else "") + \
                    (f"_e{s.episodes}" if s.episodes != self.episodes else "")
            names.append(name)
        return names

    @field_validator("settings")
    @classmethod
    def _settings_fit(cls, v: list[ValidationSetting] | None, info: Any) -> list[ValidationSetting] | None:
        # here, the error names eval.validation.settings; the model check below repeats it after an assignment
        if v is not None and {"method", "ways", "shots", "queries", "episodes", "splits", "max_rows_per_class",
                              "split", "tasks"} <= set(info.data):
            problem = _settings_problem(v, info.data)
            if problem:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _held_out_rows_are_prototype_only(self) -> "ValidationConfig":
        if (self.holdout_classes is None) == (not self.tasks):  # explicit validation tasks: today's rules, alone
            raise ValueError("eval.validation.tasks and eval.validation.holdout_classes exclude each other: validate "
                             "on tasks of your own, or on held-back classes of the meta-training tasks" if self.tasks
                             else "give validation tasks (eval.validation.tasks), or eval.validation.holdout_classes "
                             "to validate on held-back classes of the meta-training tasks")
        if self.split == "test" and self.method == "finetune":
            raise ValueError("split: test scores held-out rows with episodes (method: prototype, ridge or svm); "
                             "finetune validation draws its K-shot splits from train")
        if self.settings is None and self.method != "finetune" and self.shots + self.queries > self.max_rows_per_class:
            raise ValueError(f"shots + queries = {self.shots + self.queries} rows per class, but validation embeds at "
                             f"most max_rows_per_class = {self.max_rows_per_class} per class")
        problem = _settings_problem(self.settings, self.__dict__) if self.settings is not None else None
        if problem:
            raise ValueError(f"settings: {problem}")
        if self.selection == "no_harm":
            for name, s in zip(self.setting_names(), self.resolved_settings()):
                per_task = s.splits if s.method == "finetune" else s.episodes
                n = len(self.tasks) or 1  # holdout_classes: one task or more (checked again once resolved)
                if n * int(per_task or 0) < 2:  # one paired value: no CI, so no step could qualify
                    raise ValueError(f"select: no_harm needs a 95% CI of each setting's gain over step 0, so at "
                                     f"least 2 paired values; setting {name} has {n} task x {per_task} "
                                     f"{'splits' if s.method == 'finetune' else 'episodes'}")
        return self


def _settings_problem(settings: list[ValidationSetting], parent: dict[str, Any]) -> str | None:
    """What is wrong with ``eval.validation.settings`` given the section's own fields (``parent``), or None: a
    field that the setting's method does not read, split: test with finetune, shots + queries beyond
    max_rows_per_class (no task could supply that many), a setting listed twice."""
    seen: dict[tuple, int] = {}
    for i, s in enumerate(settings):
        method = s.method or parent["method"]
        r = {k: getattr(s, k) if getattr(s, k) is not None else parent[k]
             for k in ("ways", "shots", "queries", "episodes", "splits")}
        where = f"entry {i} ({method} {r['shots']}-shot)"
        given = [k for k in _EPISODIC_ONLY if getattr(s, k) is not None]
        if method == "finetune" and given:
            return f"{where}: {given[0]} applies to prototype, ridge and svm only (finetune scores K-shot splits)"
        if method != "finetune" and s.splits is not None:
            return f"{where}: splits applies to finetune only (episodic methods score seeded episodes: episodes)"
        if method == "finetune" and parent["split"] == "test":
            return (f"{where}: split: test scores held-out rows with episodes (method: prototype, ridge or svm); "
                    "finetune validation draws its K-shot splits from train")
        if method != "finetune" and r["shots"] + r["queries"] > parent["max_rows_per_class"]:
            return (f"{where}: shots + queries = {r['shots'] + r['queries']} rows per class, but validation embeds at "
                    f"most {parent['max_rows_per_class']} per class (eval.validation.max_rows_per_class)")
        key = (method, r["shots"], r["splits"]) if method == "finetune" else \
            (method, r["ways"], r["shots"], r["queries"], r["episodes"])
        if key in seen:
            return f"{where} is the same setting as entry {seen[key]}"
        seen[key] = i
    return None


class SetfitConfig(_Strict):
    """``eval.methods: [setfit]``: SetFit (Tunstall et al. 2022) on each K-shot split, the paper's defaults."""

    iterations: int = Field(default=20, ge=1)  # contrastive pairs: 2 x iterations x training rows (setfit num_iterations)
    epochs: int = Field(default=1, ge=1)  # over those pairs
    batch_size: int = Field(default=16, ge=1)  # pairs per contrastive step
    body_lr: float = Field(default=2e-5, gt=0.0)  # the sentence transformer's learning rate


class EvalConfig(_Strict):
    """Few-shot evaluation on held-out tasks (never used for meta-training)."""

    tasks: list[dict[str, Any]] = Field(default_factory=list)  # K-shot tasks ({use: NAME} entries)
    shots: list[int] = Field(default_factory=lambda: [4, 8, 16])
    splits: int = Field(default=5, ge=1)
    # how every init is scored on the K-shot tasks, each method on the same splits and test rows
    methods: list[EvalMethod] = Field(default_factory=lambda: ["finetune"], min_length=1)
    setfit: SetfitConfig = Field(default_factory=SetfitConfig)
    ridge: RidgeConfig = Field(default_factory=RidgeConfig)  # method ridge, here and in episodes and validation
    svm: SvmConfig = Field(default_factory=SvmConfig)  # method svm, the same
    finetune_steps: int = Field(default=30, ge=1)
    finetune_lr: float = Field(default=5e-5, gt=0.0)
    head_lr: float = Field(default=1e-3, gt=0.0)
    batch_size: int = Field(default=16, ge=1)
    max_test_examples: int | None = Field(default=1000, ge=1)
    # episodic N-way K-shot evaluation on many-class tasks (prototype classifier + fine-tuned head)
    episodic_tasks: list[dict[str, Any]] = Field(default_factory=list)
    ways: int = Field(default=5, ge=2)
    episodic_shots: list[int] = Field(default_factory=lambda: [1, 5])
    # the episodes' classifiers on frozen embeddings (each on the same episodes); head_steps adds the fine-tuned head
    episodic_methods: list[EmbeddingClassifier] = Field(default_factory=lambda: ["prototype"], min_length=1)
    queries: int = Field(default=15, ge=1)
    episodes: int = Field(default=500, ge=1)
    head_steps: int = Field(default=50, ge=0)
    # The label-name track (``raymeta benchmark``): besides every score above, the prototype classifier of the K-shot
    # classification tasks and of the episodes again with each class's name as a support point of weight λ, and at
    # K = 0 (the names alone), reported as prototype+names: apart from the no-name track, for honest comparisons.
    label_prior: LabelPriorConfig | None = None
    validation: ValidationConfig | None = None  # meta-validation during training: picks <output_dir>/best

    @field_validator("methods", "episodic_methods")
    @classmethod
    def _methods_once(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"a method is listed twice: {v}")
        return v


class BenchmarkConfig(_Strict):
    """``raymeta benchmark``: which meta-algorithms to compare, and the ``--quick`` budget."""

    algorithms: list[Algorithm] = Field(default_factory=lambda: list(ALGORITHMS))
    # Named variants of the meta-training set-up, each a dict of dotted overrides (like ``quick``), e.g.
    # {supervised: {}, hybrid: {tasks: [...]}}: every variant x every algorithm is meta-trained and evaluated
    # on the same splits and episodes, so variants get paired CIs too. Empty: one run per algorithm.
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # runs (by name: an algorithm, a variant, variant/algorithm) that every other run is paired with in
    # results.md, besides the pretrained model and multitask
    compare_to: list[str] = Field(default_factory=list)

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in v:  # a variant names a directory and a table row
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
                raise ValueError(f"variant name {name!r}: use letters, digits, '_', '.', '-'")
        return v
    quick: dict[str, Any] = Field(default_factory=lambda: {
        "meta.steps": 2, "eval.splits": 2, "eval.shots": [4], "eval.finetune_steps": 3, "eval.episodes": 50,
        "eval.max_test_examples": 64, "eval.episodic_shots": [1], "checkpoint.every_steps": 1000,
    })


class TuneSpaceConfig(_Strict):
    """What ``raymeta tune`` searches. A range of ``None`` keeps the experiment's own value."""

    weights: bool = True  # per-task log-weights, normalised onto the simplex (softmax)
    log_weight_range: tuple[float, float] = (-2.0, 2.0)  # widened to cover the seeded heuristics
    lr: tuple[float, float] | None = (5e-6, 2e-4)  # outer learning rate, log-uniform
    inner_lr: tuple[float, float] | None = None  # log-uniform, e.g. [1e-3, 1e-1] for the MAML family
    inner_steps: tuple[int, int] | None = None  # inclusive integer range
    algorithms: list[Algorithm] | None = None  # a categorical choice; None keeps meta.algorithm
    temperature: tuple[float, float] | None = None  # meta.proto.temperature, log-uniform
    trainable: list[Literal["full", "lora", "top_layers"]] | None = Field(default=None, min_length=1)  # model.trainable
    lora_r: tuple[int, int] | None = None  # model.lora.r, log-uniform integers (with trainable: lora)
    # meta.episode.ways, a categorical choice: Snell et al. (2017) trained prototypical networks with more ways than
    # the test; a user's task has as many classes as it has (RESULTS.md §15.4, §15.5)
    ways: list[int] | None = Field(default=None, min_length=1)
    # meta.weighting.rule alignment: its step size η (meta.weighting.lr, log-uniform) and floor ε (meta.weighting.floor,
    # as a fraction of 1/N, uniform: [0, 1] spans every legal floor); search these instead of the mixture (weights: false)
    weighting_lr: tuple[float, float] | None = None
    weighting_floor: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "TuneSpaceConfig":
        if self.ways is not None and min(self.ways) < 2:
            raise ValueError(f"ways: an episode needs at least 2 classes, got {self.ways}")
        if self.weighting_floor is not None and not 0 <= self.weighting_floor[0] <= self.weighting_floor[1] <= 1:
            raise ValueError(f"weighting_floor: a fraction of 1/N in [0, 1], got {list(self.weighting_floor)}")
        for key in ("log_weight_range", "lr", "inner_lr", "inner_steps", "temperature", "lora_r", "weighting_lr"):
            r = getattr(self, key)
            if r is not None and not r[0] <= r[1]:
                raise ValueError(f"{key}: expected [low, high] with low <= high, got {list(r)}")
            if r is not None and key in ("lr", "inner_lr", "temperature", "lora_r", "weighting_lr") and r[0] <= 0:
                raise ValueError(f"{key}: a log-uniform range must be positive, got {list(r)}")
        return self


class TuneConfig(EpisodicSizes):
    """``raymeta tune``: Ray Tune over mixtures and learning rates, scored few-shot on meta-validation tasks.

    Trials never see ``test_tasks``: those are scored once, after the search, for the report. The score is
    meta-validation's (:class:`EpisodicSizes`: ways, shots, queries, episodes, max_rows_per_class)."""

    num_samples: int = Field(default=8, ge=1)
    validation_tasks: list[dict[str, Any]] = Field(default_factory=list)  # class-disjoint from training
    test_tasks: list[dict[str, Any]] = Field(default_factory=list)  # meta-test: the final report only
    eval_every: int = Field(default=10, ge=1)  # meta-steps between reports (ASHA rungs, PBT intervals)
    # validation rows: every split, or only each task's test split, which meta-training never reads: then a
    # validation task may be a meta-training task itself (in-domain selection; like eval.validation.split)
    validation_split: Literal["all", "test"] = "all"
    method: EmbeddingClassifier = "prototype"  # the episodes' classifier (eval.ridge / eval.svm: its settings)
    search: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    grace_period: int = Field(default=1, ge=1)  # ASHA: reports before a trial may be stopped
    reduction_factor: float = Field(default=2.0, gt=1.0)
    heuristics: list[Literal["equal", "proportional", "temperature2"]] = Field(
        default_factory=lambda: ["equal", "proportional", "temperature2"])
    max_concurrent_trials: int | None = Field(default=None, ge=1)  # None: as many as the bundles fit
    max_failures: int = Field(default=2, ge=0)  # a failed trial restarts from its last checkpoint
    # a finished trial's driver process, placement group and task actors serve the next trial (Ray Tune's
    # reuse_actors; the task actors are reset to the new trial's config): no process start-ups between trials
    reuse_actors: bool = True
    storage_path: str | None = None  # None: <output_dir>/tune (local); s3://... or gs://... on clusters
    driver_cpus: float = Field(default=0.5, gt=0.0)  # the trial's own bundle (it also scores validation)
    space: TuneSpaceConfig = Field(default_factory=TuneSpaceConfig)


class ExperimentConfig(_Strict):
    """Everything one run needs. ``tasks`` entries are resolved :class:`TaskConfig` objects."""

    name: str = "raymeta"
    seed: int = 0
    output_dir: str = "runs/raymeta"
    data_dir: str = Field(default_factory=lambda: os.environ.get("RAYMETA_DATA_DIR", DEFAULT_DATA_DIR))
    cache_dir: str = Field(
        default_factory=lambda: os.environ.get("RAYMETA_CACHE_DIR", str(Path.home() / ".cache" / "raymeta"))
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    tasks: list[TaskConfig] = Field(default_factory=list)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    @model_validator(mode="after")
    def _unique_tasks(self) -> "ExperimentConfig":
        seen: set[str] = set()
        for t in self.tasks:
            if t.name in seen:
                raise ValueError(f"task name '{t.name}' appears twice")
            seen.add(t.name)
        return self

    @model_validator(mode="after")
    def _zero_shot_episodes(self) -> "ExperimentConfig":
        # K = 0 is an evaluation setting (label-name prototypes: raymeta evaluate --shots 0 --label-prior W); a
        # meta-training episode needs a support set for every algorithm's base learner
        for key, ep in [("meta.episode", self.meta.episode), *((f"tasks.{t.name}.episode", t.episode) for t in self.tasks)]:
            if ep is not None and ep.shots == 0:
                raise ValueError(f"{key}.shots is 0: meta-training episodes need a support set (K = 0, the label names "
                                 "alone, is for evaluation: raymeta evaluate --shots 0 --label-prior W)")
        return self

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise ConfigError(f"config key 'tasks': no task named '{name}'")


# --------------------------------------------------------------------------- loading


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:  # one line: where it broke
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {p}:{where}: YAML does not parse: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["meta.steps=10", "tasks.bbc_news.weight=2"]`` -> ``[(key, value), ...]``.

    Values are parsed as YAML scalars/lists, so ``10`` is an int and ``[4,8]`` a list.
    """
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
            raise ConfigError(f"override '{item}': expected key=value with a dotted key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def _step(node: Any, part: str, key: str) -> tuple[Any, Any]:
    """Resolve one dotted component. Lists accept an index or (for tasks) a task name."""
    if isinstance(node, list):
        if part.isdigit():
            i = int(part)
            if i >= len(node):
                raise ConfigError(f"config key '{key}': index {i} out of range ({len(node)} entries)")
            return node, i
        for i, entry in enumerate(node):
            if isinstance(entry, dict) and part in (entry.get("name"), entry.get("use")):
                return node, i
        raise ConfigError(f"config key '{key}': no entry named '{part}'")
    if isinstance(node, dict):
        return node, part
    raise ConfigError(f"config key '{key}': cannot descend into a {type(node).__name__}")


def apply_overrides(data: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """Set dotted keys in a raw config dict (in place). Unknown keys are caught by the schema check."""
    for key, value in overrides:
        parts = key.split(".")
        node: Any = data
        for part in parts[:-1]:
            parent, idx = _step(node, part, key)
            if isinstance(parent, dict) and not isinstance(parent.get(idx), (dict, list)):
                parent[idx] = {}
            node = parent[idx]
        parent, idx = _step(node, parts[-1], key)
        parent[idx] = value
    return data


def _format_error(err: ValidationError, data: dict[str, Any]) -> str:
    e = err.errors()[0]
    loc = list(e["loc"])
    # Name a task by its name rather than its index: "tasks.clinc150.weight".
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
        try:
            entry = data["tasks"][loc[1]]
            loc[1] = entry.get("name") or entry.get("use") or loc[1]
        except (KeyError, IndexError, AttributeError):
            pass
    # pydantic appends the union member / validator name to loc; keep only real keys.
    loc = [str(x) for x in loc if not (isinstance(x, str) and ("[" in x or x.startswith("function-")))]
    key = ".".join(loc) or "<root>"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], (dict, list)):
        msg += f" (got {e['input']!r})"
    return f"config key '{key}': {msg}"


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    data: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """defaults -> YAML (``path`` or ``data``) -> ``key=value`` overrides -> checked config.

    ``path`` is a YAML file, or the name of a config shipped in ``raymeta/configs/`` (``starter``,
    ``recipes/huffpost``: :func:`raymeta.catalog.config_file`); an unknown one is an error listing those.

    Task entries may be full task dicts, or ``{use: NAME_OR_FILE, ...}`` to start from a
    ready-made task (or a task YAML) and override some of its keys (weight, include_labels...).
    """
    raw: dict[str, Any] = dict(data or {})
    base = Path(".")
    if path is not None:
        path = config_file(path)  # a file, or a shipped config by name (``starter``, ``recipes/huffpost``)
        raw = _read_yaml(path)
        base = path.parent
    apply_overrides(raw, parse_overrides(overrides or []))
    data_dir = str(raw.get("data_dir") or os.environ.get("RAYMETA_DATA_DIR", DEFAULT_DATA_DIR))
    if "tasks" in raw:
        if not isinstance(raw["tasks"], list):
            raise ConfigError("config key 'tasks': must be a list of task entries")
        raw["tasks"] = [resolve_task_entry(t, data_dir=data_dir, base=base) for t in raw["tasks"]]
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, raw)) from None
    return cfg


def check_task(raw: dict[str, Any], *, origin: str) -> TaskConfig:
    """One task dict (from a task YAML or a config entry) checked against the schema, as a :class:`TaskConfig`;
    a one-line error that starts with ``origin`` otherwise."""
    try:
        return TaskConfig.model_validate(raw)
    except ValidationError as e:
        msg = _format_error(e, {})
        raise ConfigError(f"{origin}: {msg}") from None


# --------------------------------------------------------------------------- saving

# Names of secrets, matched against a key's whole name or its last one to three words (``hf_token``,
# ``use_auth_token``, ``aws_secret_access_key``, ``apiKey``), never as substrings: ``model.tokenizer`` or a
# ``max_tokens`` is a setting, and redacting it would save a config.yaml that no longer reloads as its run.
_SECRET_NAMES = frozenset({
    "token", "secret", "password", "passwd", "auth", "credential", "credentials",
    "api_key", "apikey", "access_key", "secret_key", "private_key", "secret_access_key",
})
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})\b")


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a secret: ``token``, ``hf_token``, ``api_key``, ``client_secret``... (not
    ``tokenizer``, ``max_tokens``, ``pad_token_id``)."""
    camel = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key))  # apiKey -> api_Key
    words = [w for w in re.split(r"[_\-.\s]+", camel.lower()) if w]
    return any("_".join(words[-n:]) in _SECRET_NAMES for n in (1, 2, 3) if n <= len(words))


def redact(obj: Any) -> Any:
    """Replace secret values before anything is logged or saved: those under a secret's name
    (:func:`is_secret_key`), and hub-token- or AWS-key-shaped strings anywhere."""
    if isinstance(obj, dict):
        return {k: ("***" if is_secret_key(k) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return _SECRET_VALUE.sub("***", obj)
    return obj


def save_config(cfg: ExperimentConfig, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config (secrets redacted) into ``directory`` atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    target = d / name
    tmp = d / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False), encoding="utf-8")
    os.replace(tmp, target)
    return target
