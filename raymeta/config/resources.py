"""Where and how a run runs: the ``resources`` of its task actors, its ``checkpoint`` policy,
and ``tune`` (Ray Tune's search over mixtures and learning rates)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import Algorithm, EmbeddingClassifier, StrictModel
from .evaluation import EpisodicSizes

__all__ = ["ResourcesConfig", "CheckpointConfig", "TuneSpaceConfig", "TuneConfig"]


class ResourcesConfig(StrictModel):
    """Where actors run. ``None`` means: decide from what the cluster has
    (:func:`raymeta.cluster.plan_actors`)."""

    address: str | None = None  # None: $RAY_ADDRESS, else a local instance on loopback
    # GPUs per task actor. auto: one whole GPU each when the cluster can provide them: it has a GPU
    # for every actor now, or its autoscaler has a node type with GPUs (the actors then wait for it
    # to add those nodes); on a fixed cluster with fewer GPUs than actors, an equal fraction of
    # them; no GPU anywhere: CPU. 0: CPU, never a GPU. A number: that many GPUs each, whole or a
    # fraction (0.5: two actors share one).
    gpus: Literal["auto"] | float = "auto"
    # CPUs per task actor. None: 1 with a GPU, or on a cluster that can autoscale; else an equal
    # share of the CPUs up.
    num_cpus_per_actor: float | None = Field(default=None, gt=0.0)
    # GPUs per task actor, the older key: when set, it wins over ``gpus``.
    num_gpus_per_actor: float | None = Field(default=None, ge=0.0)
    custom_resources: dict[str, float] = Field(default_factory=dict)
    torch_threads: int | None = Field(default=None, ge=1)
    # Memory each task actor declares to Ray, in GB, so that Ray places actors by memory instead of
    # its memory monitor killing one mid-step, and a run that cannot fit says so before it starts.
    # auto: estimated from the model's size and the widest episode
    # (raymeta.cluster.memory.actor_memory_bytes, measured on MiniLM); None: declare none.
    memory_per_actor: Literal["auto"] | float | None = "auto"
    # How many processes compute the task gradients. None: one task actor per task (and replica).
    # A number W below that: W workers, each owning several tasks' data and heads around one copy
    # of the model (raymeta.train.worker), assigned by cost and recorded in workers.json; memory,
    # GPUs and start-up then grow with W, not with the number of tasks. auto: one worker per GPU
    # of the cluster, else per CPU, as many as its memory holds, and no more than the tasks.
    # (resources.*_per_actor size each worker.)
    workers: Literal["auto"] | int | None = None
    # How long the task actors may wait to be placed (for an autoscaler to add nodes, or for busy
    # nodes to free up) while none of them is placed and no node joins; then the run stops with one
    # line naming what is missing. A request no node (nor node type of the autoscaler) can ever meet
    # fails at once instead.
    placement_timeout_s: float = Field(default=900.0, gt=0.0)

    @field_validator("memory_per_actor")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if v not in ("auto", None) and not (math.isfinite(v) and v > 0):
            raise ValueError("expected auto, null (declare none) or a positive number of GB")
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if v not in ("auto", None) and (isinstance(v, bool) or v < 1):
            raise ValueError("expected auto, null (one actor per task) or a number of workers >= 1")
        return v

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
            raise ValueError("expected auto, 0 (CPU) or a number of GPUs per task actor (e.g. 1 or "
                             "0.5)")
        return n


class CheckpointConfig(StrictModel):
    every_steps: int = Field(default=50, ge=1)
    keep_last: int = Field(default=2, ge=1)
    # A task actor that dies (its process killed, its node lost) is restarted with all the others,
    # and training goes back to the last checkpoint (or step 0) and replays; this many times per
    # run, then the run stops with a one-line error. 0: the first lost actor ends the run.
    max_actor_restarts: int = Field(default=3, ge=0)
    # Export <output_dir>/best: the step (step 0, the starting model, included) that scores highest
    # on eval.validation. None: whenever validation tasks are configured.
    best: bool | None = None


class TuneSpaceConfig(StrictModel):
    """What ``raymeta tune`` searches. A range of ``None`` keeps the experiment's own value."""

    weights: bool = True  # per-task log-weights, normalised onto the simplex (softmax)
    log_weight_range: tuple[float, float] = (-2.0, 2.0)  # widened to cover the seeded heuristics
    lr: tuple[float, float] | None = (5e-6, 2e-4)  # outer learning rate, log-uniform
    # log-uniform, e.g. [1e-3, 1e-1] for the MAML family
    inner_lr: tuple[float, float] | None = None
    inner_steps: tuple[int, int] | None = None  # inclusive integer range
    algorithms: list[Algorithm] | None = None  # a categorical choice; None keeps meta.algorithm
    temperature: tuple[float, float] | None = None  # meta.proto.temperature, log-uniform
    # model.trainable
    trainable: list[Literal["full", "lora", "top_layers"]] | None = Field(default=None,
                                                                          min_length=1)
    # model.lora.r, log-uniform integers (with trainable: lora)
    lora_r: tuple[int, int] | None = None
    # meta.episode.ways, a categorical choice: Snell et al. (2017) trained prototypical networks
    # with more ways than the test; a user's task has as many classes as it has
    # (benchmarks/results/label-names-kshot.md#the-clinc-recipe-tuned-on-held-out-intents,
    # benchmarks/results/label-names-kshot.md#episodes-as-wide-as-the-target-task-huffpost-16-way)
    ways: list[int] | None = Field(default=None, min_length=1)
    # meta.weighting.rule alignment: its step size η (meta.weighting.lr, log-uniform) and floor ε
    # (meta.weighting.floor, as a fraction of 1/N, uniform: [0, 1] spans every legal floor); search
    # these instead of the mixture (weights: false)
    weighting_lr: tuple[float, float] | None = None
    weighting_floor: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "TuneSpaceConfig":
        if self.ways is not None and min(self.ways) < 2:
            raise ValueError(f"ways: an episode needs at least 2 classes, got {self.ways}")
        if (self.weighting_floor is not None
                and not 0 <= self.weighting_floor[0] <= self.weighting_floor[1] <= 1):
            raise ValueError("weighting_floor: a fraction of 1/N in [0, 1], got "
                             f"{list(self.weighting_floor)}")
        for key in ("log_weight_range", "lr", "inner_lr", "inner_steps", "temperature", "lora_r",
                    "weighting_lr"):
            r = getattr(self, key)
            if r is not None and not r[0] <= r[1]:
                raise ValueError(f"{key}: expected [low, high] with low <= high, got {list(r)}")
            if r is not None and key in ("lr", "inner_lr", "temperature", "lora_r",
                                         "weighting_lr") and r[0] <= 0:
                raise ValueError(f"{key}: a log-uniform range must be positive, got {list(r)}")
        return self


class TuneConfig(EpisodicSizes):
    """``raymeta tune``: Ray Tune over mixtures and learning rates, scored few-shot on
    meta-validation tasks.

    Trials never see ``test_tasks``: those are scored once, after the search, for the report. The
    score is meta-validation's (:class:`EpisodicSizes`: ways, shots, queries, episodes,
    max_rows_per_class)."""

    num_samples: int = Field(default=8, ge=1)
    # class-disjoint from training
    validation_tasks: list[dict[str, Any]] = Field(default_factory=list)
    # meta-test: the final report only
    test_tasks: list[dict[str, Any]] = Field(default_factory=list)
    # meta-steps between reports (ASHA rungs, PBT intervals)
    eval_every: int = Field(default=10, ge=1)
    # validation rows: every split, or only each task's test split, which meta-training never reads:
    # then a validation task may be a meta-training task itself (in-domain selection; like
    # eval.validation.split)
    validation_split: Literal["all", "test"] = "all"
    # the episodes' classifier (eval.ridge / eval.svm: its settings)
    method: EmbeddingClassifier = "prototype"
    search: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    grace_period: int = Field(default=1, ge=1)  # ASHA: reports before a trial may be stopped
    reduction_factor: float = Field(default=2.0, gt=1.0)
    heuristics: list[Literal["equal", "proportional", "temperature2"]] = Field(
        default_factory=lambda: ["equal", "proportional", "temperature2"])
    # None: as many as the bundles fit
    max_concurrent_trials: int | None = Field(default=None, ge=1)
    max_failures: int = Field(default=2, ge=0)  # a failed trial restarts from its last checkpoint
    # a finished trial's driver process, placement group and task actors serve the next trial (Ray
    # Tune's reuse_actors; the task actors are reset to the new trial's config): no process
    # start-ups between trials
    reuse_actors: bool = True
    # None: <output_dir>/tune (local); s3://... or gs://... on clusters
    storage_path: str | None = None
    # the trial's own bundle (it also scores validation)
    driver_cpus: float = Field(default=0.5, gt=0.0)
    space: TuneSpaceConfig = Field(default_factory=TuneSpaceConfig)
