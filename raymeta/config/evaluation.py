"""The ``eval`` and ``benchmark`` sections: few-shot evaluation on held-out tasks,
meta-validation during meta-training (which step is ``best``), the episodic score it shares with
``raymeta tune``, and what ``raymeta benchmark`` compares."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .base import ALGORITHMS, Algorithm, EmbeddingClassifier, EvalMethod, StrictModel
from .meta import LabelPriorConfig, RidgeConfig, SvmConfig

__all__ = [
    "EarlyStopping",
    "EpisodicSizes",
    "EpisodicProtocol",
    "ValidationMethod",
    "ValidationSetting",
    "ValidationConfig",
    "FastfitConfig",
    "SetfitConfig",
    "EvalConfig",
    "BenchmarkConfig",
]


class EarlyStopping(StrictModel):
    patience: int = Field(ge=1)  # stop after this many validations in a row without a new best


class EpisodicSizes(StrictModel):
    """The episodes of the prototype-accuracy score shared by meta-validation (``eval.validation``)
    and ``raymeta tune``'s trial score (``tune``): seeded N-way K-shot episodes (Vinyals et al.
    2016) scored by the prototype classifier (Snell et al. 2017) on a fixed seeded subsample of
          rows. One definition for both, and
    one scorer (:mod:`raymeta.eval.scoring`, with :class:`EpisodicProtocol`), so a Tune trial and
    ``best`` are chosen on the same number."""

    ways: int = Field(default=5, ge=2)  # N-way episodes
    # per class in the support set (eval.validation method finetune: K per class)
    shots: int = Field(default=5, ge=1)
    queries: int = Field(default=10, ge=1)  # per class
    episodes: int = Field(default=200, ge=1)  # seeded episodes per task (the same at every score)
    # rows embedded per class (a seeded subsample, fixed)
    max_rows_per_class: int = Field(default=40, ge=2)


class EpisodicProtocol(EpisodicSizes):
    """Everything that fixes an episodic prototype score (:func:`raymeta.eval.scoring.protocol`
    builds it from an experiment): the sizes, which rows (``split``), the seed (rows:
    ``default_rng([seed, 7])`` per task; episodes: ``seed``), and the ProtoNet metric of the run
    (``meta.proto``). ``key`` and ``split_key`` name the config keys in error messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Literal["all", "test"] = "all"
    seed: int = 0
    distance: Literal["euclidean", "cosine"] = "euclidean"
    temperature: float = Field(default=1.0, gt=0.0)
    # the episodes' classifier (eval.ridge / eval.svm: its settings)
    classifier: EmbeddingClassifier = "prototype"
    ridge: RidgeConfig = Field(default_factory=RidgeConfig)
    svm: SvmConfig = Field(default_factory=SvmConfig)
    # the run's meta.proto.label_prior (λ, template): the prototype classifier's label-name prior;
    # 0: none
    label_prior: float = Field(default=0.0, ge=0.0)
    label_template: str = "{name}"
    key: str = "eval.validation"
    split_key: str = "eval.validation.split"


ValidationMethod = Literal["prototype", "ridge", "svm", "finetune"]
_EPISODIC_ONLY = ("ways", "queries", "episodes")  # setting fields that only episodic methods read


class ValidationSetting(StrictModel):
    """One entry of ``eval.validation.settings``: a method and size at which every validated step is
    scored. An unset field is ``eval.validation``'s own (:meth:`ValidationConfig.resolved_settings`
    fills them in)."""

    method: ValidationMethod | None = None
    ways: int | None = Field(default=None, ge=2)  # prototype / ridge / svm only
    shots: int | None = Field(default=None, ge=1)
    queries: int | None = Field(default=None, ge=1)  # prototype / ridge / svm only
    episodes: int | None = Field(default=None, ge=1)  # prototype / ridge / svm only
    splits: int | None = Field(default=None, ge=1)  # finetune only


class ValidationConfig(EpisodicSizes):
    """Meta-validation during meta-training: which checkpoint adapts best to *new* tasks, chosen on
    validation tasks that are neither meta-trained on nor tested on (never the test tasks). The
    episode fields (ways, shots, queries, episodes, max_rows_per_class) are :class:`EpisodicSizes`,
    shared with ``tune``."""

    # {use: NAME} entries or task dicts; classification
    tasks: list[dict[str, Any]] = Field(default_factory=list)
    # Instead of tasks: hold back this seeded fraction (e.g. 0.2) of each meta-training
    # classification task's classes; meta-training never sees them, validation scores them
    # (raymeta.tasks.holdout; <output_dir>/holdout_classes.json)
    holdout_classes: float | None = Field(default=None, gt=0.0, lt=1.0)
    # episodic accuracy of an embedding classifier (prototype, ridge, svm: eval.ridge / eval.svm),
    # or K-shot fine-tuning
    method: ValidationMethod = "prototype"
    splits: int = Field(default=2, ge=1)  # finetune: seeded K-shot splits per task
    # rows scored: every split of a validation task, or only its test split. "test" allows in-domain
    # selection on a meta-training task's held-back rows (meta-training reads train splits only;
    # prototype method only).
    split: Literal["all", "test"] = "all"
    every_steps: int = Field(default=10, ge=1)  # and at step 0 and at the last step
    early_stopping: EarlyStopping | None = None
    # Score every validated step at several settings, e.g. [{method: prototype, shots: 1}, {method:
    # prototype, shots: 5}, {method: finetune, shots: 8}]: a step that helps at 1 shot can hurt at 5
    # (benchmarks/results/recipes.md#general-purpose-with-setfit), which one setting cannot see.
    # Unset fields are the ones above. null: the one setting above.
    settings: list[ValidationSetting] | None = Field(default=None, min_length=1)
    # How best is chosen (raymeta.train.validation). mean: the highest score (with several settings,
    # the mean of the settings' scores). no_harm: the highest mean gain over step 0 among the steps
    # whose paired gain over step 0 has a 95% CI lower bound >= -tolerance at every setting (none:
    # step 0). null: no_harm with several settings, else mean (the choice of a single setting as
    # ever).
    select: Literal["mean", "no_harm"] | None = None
    # The loss that no_harm forgives, in the unit of the scores: accuracy as a fraction (0.01 = one
    # point).
    tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)

    @property
    def selection(self) -> Literal["mean", "no_harm"]:
        """``select``, resolved: no_harm with more than one setting, else mean."""
        if self.select is not None:
            return self.select
        return "no_harm" if self.settings is not None and len(self.settings) > 1 else "mean"

    def resolved_settings(self) -> list[ValidationSetting]:
        """Every setting with every field filled in from this section (without ``settings``: the one
        setting of this section's own fields)."""
        base = {"method": self.method, "ways": self.ways, "shots": self.shots,
                "queries": self.queries,
                "episodes": self.episodes, "splits": self.splits}
        return [ValidationSetting(**{**base,
                                     **s.model_dump(exclude_none=True)}) for s in self.settings
                or [ValidationSetting()]]

    def setting_names(self) -> list[str]:
        """Each resolved setting's name in records, metrics.jsonl and TensorBoard tags:
        ``prototype_5w1s``, ``finetune_8s``, with ``_q<queries>``, ``_e<episodes>`` (``_x<splits>``)
        where those differ from this section's own (two distinct settings never share a name)."""
        names = []
        for s in self.resolved_settings():
            if s.method == "finetune":
                name = f"finetune_{s.shots}s" + (f"_x{s.splits}" if s.splits != self.splits else "")
            else:
                name = f"{s.method}_{s.ways}w{s.shots}s" + (f"_q{s.queries}"
                                                            if s.queries != self.queries
                                                            else "") + \
                    (f"_e{s.episodes}" if s.episodes != self.episodes else "")
            names.append(name)
        return names

    @field_validator("settings")
    @classmethod
    def _settings_fit(cls, v: list[ValidationSetting] | None,
                      info: Any) -> list[ValidationSetting] | None:
        # here, the error names eval.validation.settings; the model check below repeats it after an
        # assignment
        if v is not None and {"method", "ways", "shots", "queries", "episodes", "splits",
                              "max_rows_per_class",
                              "split", "tasks"} <= set(info.data):
            problem = _settings_problem(v, info.data)
            if problem:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _held_out_rows_are_prototype_only(self) -> "ValidationConfig":
        # explicit validation tasks: today's rules, alone
        if (self.holdout_classes is None) == (not self.tasks):
            raise ValueError("eval.validation.tasks and eval.validation.holdout_classes exclude "
                             "each other: validate "
                             "on tasks of your own, or on held-back classes of the meta-training "
                             "tasks" if self.tasks
                             else "give validation tasks (eval.validation.tasks), or "
                             "eval.validation.holdout_classes "
                             "to validate on held-back classes of the meta-training tasks")
        if self.split == "test" and self.method == "finetune":
            raise ValueError("split: test scores held-out rows with episodes (method: prototype, "
                             "ridge or svm); "
                             "finetune validation draws its K-shot splits from train")
        if (self.settings is None and self.method != "finetune"
                and self.shots + self.queries > self.max_rows_per_class):
            raise ValueError(f"shots + queries = {self.shots + self.queries} rows per class, but "
                             "validation embeds at "
                             f"most max_rows_per_class = {self.max_rows_per_class} per class")
        problem = _settings_problem(self.settings,
                                    self.__dict__) if self.settings is not None else None
        if problem:
            raise ValueError(f"settings: {problem}")
        if self.selection == "no_harm":
            for name, s in zip(self.setting_names(), self.resolved_settings()):
                per_task = s.splits if s.method == "finetune" else s.episodes
                # holdout_classes: one task or more (checked again once resolved)
                n = len(self.tasks) or 1
                if n * int(per_task or 0) < 2:  # one paired value: no CI, so no step could qualify
                    raise ValueError("select: no_harm needs a 95% CI of each setting's gain over "
                                     "step 0, so at "
                                     f"least 2 paired values; setting {name} has {n} task x "
                                     f"{per_task} "
                                     f"{'splits' if s.method == 'finetune' else 'episodes'}")
        return self


def _settings_problem(settings: list[ValidationSetting], parent: dict[str, Any]) -> str | None:
    """What is wrong with ``eval.validation.settings`` given the section's own fields (``parent``),
    or None: a field that the setting's method does not read, split: test with finetune, shots +
    queries beyond max_rows_per_class (no task could supply that many), a setting listed twice."""
    seen: dict[tuple, int] = {}
    for i, s in enumerate(settings):
        method = s.method or parent["method"]
        r = {k: getattr(s, k) if getattr(s, k) is not None else parent[k]
             for k in ("ways", "shots", "queries", "episodes", "splits")}
        where = f"entry {i} ({method} {r['shots']}-shot)"
        given = [k for k in _EPISODIC_ONLY if getattr(s, k) is not None]
        if method == "finetune" and given:
            return (f"{where}: {given[0]} applies to prototype, ridge and svm only (finetune "
                    "scores K-shot splits)")
        if method != "finetune" and s.splits is not None:
            return (f"{where}: splits applies to finetune only (episodic methods score seeded "
                    "episodes: episodes)")
        if method == "finetune" and parent["split"] == "test":
            return (f"{where}: split: test scores held-out rows with episodes (method: prototype, "
                    "ridge or svm); finetune validation draws its K-shot splits from train")
        if method != "finetune" and r["shots"] + r["queries"] > parent["max_rows_per_class"]:
            return (f"{where}: shots + queries = {r['shots'] + r['queries']} rows per class, but "
                    f"validation embeds at most {parent['max_rows_per_class']} per class "
                    "(eval.validation.max_rows_per_class)")
        key = (method, r["shots"], r["splits"]) if method == "finetune" else \
            (method, r["ways"], r["shots"], r["queries"], r["episodes"])
        if key in seen:
            return f"{where} is the same setting as entry {seen[key]}"
        seen[key] = i
    return None


class SetfitConfig(StrictModel):
    """``eval.methods: [setfit]``: SetFit (Tunstall et al. 2022) on each K-shot split, the paper's
    defaults."""

    # contrastive pairs: 2 x iterations x training rows (setfit num_iterations)
    iterations: int = Field(default=20, ge=1)
    epochs: int = Field(default=1, ge=1)  # over those pairs
    batch_size: int = Field(default=16, ge=1)  # pairs per contrastive step
    body_lr: float = Field(default=2e-5, gt=0.0)  # the sentence transformer's learning rate


class FastfitConfig(StrictModel):
    """``eval.methods: [fastfit]``: FastFit (Yehudai and Bandel 2024) on each K-shot split, the
    training call in its README (raymeta.eval.fastfit)."""

    epochs: int = Field(default=40, ge=1)
    batch_size: int = Field(default=32, ge=1)
    num_repeats: int = Field(default=4, ge=1)  # each text this many times per epoch, augmented
    lr: float = Field(default=5e-5, gt=0.0)  # the Hugging Face trainer's default
    clf_loss_factor: float = Field(default=0.1, ge=0.0)
    optim: Literal["adafactor", "adamw_torch"] = "adafactor"
    max_text_length: int = Field(default=128, ge=8)


class EvalConfig(StrictModel):
    """Few-shot evaluation on held-out tasks (never used for meta-training)."""

    tasks: list[dict[str, Any]] = Field(default_factory=list)  # K-shot tasks ({use: NAME} entries)
    shots: list[int] = Field(default_factory=lambda: [4, 8, 16])
    splits: int = Field(default=5, ge=1)
    # how every init is scored on the K-shot tasks, each method on the same splits and test rows
    methods: list[EvalMethod] = Field(default_factory=lambda: ["finetune"], min_length=1)
    setfit: SetfitConfig = Field(default_factory=SetfitConfig)
    fastfit: FastfitConfig = Field(default_factory=FastfitConfig)
    # method ridge, here and in episodes and validation
    ridge: RidgeConfig = Field(default_factory=RidgeConfig)
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
    # the episodes' classifiers on frozen embeddings (each on the same episodes); head_steps adds
    # the fine-tuned head
    episodic_methods: list[EmbeddingClassifier] = Field(default_factory=lambda: ["prototype"],
                                                        min_length=1)
    queries: int = Field(default=15, ge=1)
    episodes: int = Field(default=500, ge=1)
    head_steps: int = Field(default=50, ge=0)
    # The label-name track (``raymeta benchmark``): besides every score above, the prototype
    # classifier of the K-shot classification tasks and of the episodes again with each class's name
    # as a support point of weight λ, and at K = 0 (the names alone), reported as prototype+names:
    # apart from the no-name track, for honest comparisons.
    label_prior: LabelPriorConfig | None = None
    # meta-validation during training: picks <output_dir>/best
    validation: ValidationConfig | None = None

    @field_validator("methods", "episodic_methods")
    @classmethod
    def _methods_once(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"a method is listed twice: {v}")
        return v


class BenchmarkConfig(StrictModel):
    """``raymeta benchmark``: which meta-algorithms to compare, and the ``--quick`` budget."""

    algorithms: list[Algorithm] = Field(default_factory=lambda: list(ALGORITHMS))
    # Named variants of the meta-training set-up, each a dict of dotted overrides (like ``quick``),
    # e.g. {supervised: {}, hybrid: {tasks: [...]}}: every variant x every algorithm is meta-trained
    # and evaluated on the same splits and episodes, so variants get paired CIs too. Empty: one run
    # per algorithm.
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # runs (by name: an algorithm, a variant, variant/algorithm) that every other run is paired with
    # in results.md, besides the pretrained model and multitask
    compare_to: list[str] = Field(default_factory=list)

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in v:  # a variant names a directory and a table row
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
                raise ValueError(f"variant name {name!r}: use letters, digits, '_', '.', '-'")
        return v
    quick: dict[str, Any] = Field(default_factory=lambda: {
        "meta.steps": 2, "eval.splits": 2, "eval.shots": [4], "eval.finetune_steps": 3,
                                                           "eval.episodes": 50,
        "eval.max_test_examples": 64, "eval.episodic_shots": [1], "checkpoint.every_steps": 1000,
    })
