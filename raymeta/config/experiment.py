"""The whole schema: :class:`ExperimentConfig`, one field per section, in the order a saved
``config.yaml`` lists them."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from ..errors import ConfigError
from .base import DEFAULT_DATA_DIR, StrictModel
from .evaluation import BenchmarkConfig, EvalConfig
from .meta import MetaConfig, OptimConfig
from .resources import CheckpointConfig, ResourcesConfig, TuneConfig
from .tasks import ModelConfig, TaskConfig

__all__ = ["ExperimentConfig"]


class ExperimentConfig(StrictModel):
    """Everything one run needs. ``tasks`` entries are resolved :class:`TaskConfig` objects."""

    name: str = "raymeta"
    seed: int = 0
    output_dir: str = "runs/raymeta"
    data_dir: str = Field(
        default_factory=lambda: os.environ.get("RAYMETA_DATA_DIR", DEFAULT_DATA_DIR)
    )
    cache_dir: str = Field(
        default_factory=lambda: os.environ.get(
            "RAYMETA_CACHE_DIR", str(Path.home() / ".cache" / "raymeta")
        )
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
        # K = 0 is an evaluation setting (label-name prototypes: raymeta evaluate --shots 0
        # --label-prior W); a meta-training episode needs a support set for every algorithm's base
        # learner
        for key, ep in [("meta.episode", self.meta.episode), *((f"tasks.{t.name}.episode",
                                                                t.episode) for t in self.tasks)]:
            if ep is not None and ep.shots == 0:
                raise ValueError(f"{key}.shots is 0: meta-training episodes need a support set (K "
                                 "= 0, the label names "
                                 "alone, is for evaluation: raymeta evaluate --shots 0 "
                                 "--label-prior W)")
        return self

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise ConfigError(f"config key 'tasks': no task named '{name}'")
