"""The task and model sections: where a task's rows come from (:class:`SourceConfig`), its
episodes (:class:`EpisodeConfig`), the task itself (:class:`TaskConfig`), and the shared encoder
(:class:`ModelConfig`, with its :class:`LoraConfig`)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_serializer, model_validator

from .base import StrictModel, TaskType

__all__ = ["SourceConfig", "EpisodeConfig", "TaskConfig", "LoraConfig", "ModelConfig"]


class SourceConfig(StrictModel):
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
    # files: the folder a relative path in ``files`` starts from. Set when a task YAML (or an
    # experiment config's inline task) is read: the folder of that file. None: the current
    # directory. ``${data_dir}`` and absolute paths ignore it. Left out of dumps when None, so
    # configs (and cache keys) without it read as before.
    base_dir: str | None = None
    # builtin
    name: str | None = None
    # all kinds: canonical split (train/validation/test) -> source split name
    splits: dict[str, str] = Field(default_factory=dict)
    # Carve a test split out of train when the source has none (seeded, deterministic).
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    split_seed: int = 0
    max_rows: int | None = Field(default=None, gt=0)
    # smlmt (Bansal et al. 2020): the text to read (written ``from:``): ready-made task names, task
    # YAML files, or task entries ({use: NAME, ...} or {source: {...}, columns: {text: COL}}); their
    # train splits' text.
    corpus: list[str | dict[str, Any]] = Field(default_factory=list,
                                               validation_alias=AliasChoices("from", "corpus"))
    # the most frequent eligible words become the classes
    vocab_size: int = Field(default=1000, ge=2)
    # a word must occur in at least this many distinct sentences
    min_count: int = Field(default=10, ge=1)
    # rows per word (a seeded subsample beyond it)
    max_sentences_per_word: int = Field(default=50, ge=1)
    min_word_length: int = Field(default=3, ge=1)
    sentence_words: tuple[int, int] = (4, 64)  # sentences outside this range of words are skipped
    # on top of scikit-learn's English stop words
    exclude_words: list[str] = Field(default_factory=list)
    # replaces the word when the tokenizer has no mask token
    placeholder: str = Field(default="___", min_length=1)
    # which words an episode asks about: uniform, or with probability ∝ log(1 + sentences with the
    # word)
    sampling: Literal["uniform", "log_frequency"] = "uniform"

    @model_serializer(mode="wrap")
    def _drop_unset_base_dir(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("base_dir") is None:
            data.pop("base_dir", None)
        return data

    @model_validator(mode="after")
    def _kind_fields(self) -> "SourceConfig":
        need = {"hub": "dataset", "files": "format", "builtin": "name",
                "smlmt": "corpus"}[self.kind]
        if getattr(self, need) in (None, "", []):
            raise ValueError(f"source kind '{self.kind}' needs "
                             f"'{'from' if need == 'corpus' else need}'")
        if self.kind == "files" and not self.files:
            raise ValueError("source kind 'files' needs 'files' (split -> path)")
        return self


class EpisodeConfig(StrictModel):
    """Support/query sizes of one episode (Vinyals et al. 2016's N-way K-shot protocol)."""

    ways: int | None = Field(default=5, ge=2)  # classification: None = every class
    # classification: support examples per class (0, zero-shot from label names, in evaluation only)
    shots: int = Field(default=5, ge=0)
    queries: int = Field(default=5, ge=1)  # classification: query examples per class
    support_size: int = Field(default=8, ge=1)  # other task types: examples in the support set
    query_size: int = Field(default=8, ge=1)


class TaskConfig(StrictModel):
    """A task: a name, a type, a source, a column mapping and a label set."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    type: TaskType
    source: SourceConfig
    description: str = ""
    # canonical column -> source column (e.g. {text: sentence}); unmapped ones keep their name
    columns: dict[str, str | list[str]] = Field(default_factory=dict)
    labels: list[str] | None = None  # None: every label seen in the train split, sorted
    include_labels: list[str] | None = None  # keep only these classes (class-disjoint meta-splits)
    # label -> its name in words ({card_arrival: "card arrival"}), read by meta.proto.label_prior
    # and evaluate --label-prior; or a JSON file of that mapping (``${data_dir}`` substituted; a
    # value may be a list, [name, description, ...], as FewRel's pid2name.json: its first item).
    # Without it each label is named by itself, underscores as spaces, lower case
    # (raymeta.tasks.label_name). It must name every label, and only labels.
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
    # many tasks from one (raymeta.tasks.label_groups), classification: k class-disjoint tasks
    # <name>_g<i> over seeded groups of the task's classes; or named groups, {group: [labels]} or a
    # JSON file of one (CLINC150's domains.json), a task <name>_<group> each; weight shared equally
    label_groups: Annotated[int, Field(ge=2)] | dict[str, Any] | str | None = None
    # many tasks from one: a task <name>_<value> for each value of this source column in the train
    # split (domain, source, product), over its rows (where); weight shared (any task type). An
    # SMLMT task: ``corpus``, one SMLMT task per text source it reads
    split_by: str | None = None
    # only the rows whose source column holds this value ({domain: banking}; compared as text)
    where: dict[str, str] | None = None

    @model_validator(mode="after")
    def _smlmt_type(self) -> "TaskConfig":
        # SMLMT rows are ordinary classification rows whose classes are words: nothing above tasks/
        # changes.
        if self.source.kind == "smlmt" and self.type != "sequence_classification":
            raise ValueError("source kind 'smlmt' makes a sequence_classification task, not "
                             f"{self.type}")
        if self.source.kind == "smlmt" and (self.where or self.split_by not in (None, "corpus")):
            raise ValueError("an SMLMT task splits by its sources (split_by: corpus); where and "
                             "other split_by columns pick labelled rows")
        if self.label_groups is not None and (self.type != "sequence_classification"
                                              or self.source.kind == "smlmt"):
            raise ValueError("label_groups splits a sequence_classification task's labelled "
                             "classes (not SMLMT's words)")
        return self

    @field_validator("weight")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("where", mode="before")
    @classmethod
    def _where_as_str(cls, v: Any) -> Any:
        # YAML gives ints and bools for values such as 2021 or yes; rows are compared as text
        if isinstance(v, dict):
            return {str(k): str(x) for k, x in v.items()}
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


class LoraConfig(StrictModel):
    """LoRA adapters (Hu et al. 2022) through Hugging Face ``peft``: W + (alpha/r)·B·A with B = 0 at
    the start, so step 0 is the pretrained model exactly."""

    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0.0)
    # 0 by default: with dropout the adapters draw random numbers in training mode, which shifts
    # every later dropout mask of the encoder away from the pretrained model's (and it is a
    # regulariser few-shot runs rarely need).
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # None: the family's default (BERT-like: query, key, value, dense; GPT-2: c_attn, c_proj;
    # others: peft's table)
    target_modules: list[str] | None = Field(default=None, min_length=1)


class ModelConfig(StrictModel):
    """The shared encoder (``AutoModel``) and how heads read it."""

    name_or_path: str = "offline:all-MiniLM-L6-v2"
    tokenizer: str | None = None  # default: name_or_path
    revision: str | None = None
    trust_remote_code: bool = False  # security: never on unless asked for
    # Build a randomly initialised model from this config dict instead of loading weights
    # (e.g. {model_type: bert, hidden_size: 32, ...}); used by tests and benchmarks.
    from_config: dict[str, Any] | None = None
    # None: mean for encoders, last for GPT-style
    pooling: Literal["mean", "cls", "last"] | None = None
    head_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    # Which encoder parameters are meta-learned (the rest stay the pretrained ones and never
    # travel): full: all; lora: LoRA adapters only (model.lora); top_layers: the top
    # model.top_layers transformer layers.
    trainable: Literal["full", "lora", "top_layers"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    top_layers: int | None = Field(default=None, ge=1)  # with trainable: top_layers
    train_norms: bool = False  # lora / top_layers: also train every LayerNorm (weight and bias)

    @model_validator(mode="after")
    def _trainable_fields(self) -> "ModelConfig":
        if self.trainable == "top_layers" and self.top_layers is None:
            raise ValueError("trainable: top_layers needs model.top_layers (how many of the top "
                             "layers train)")
        return self
