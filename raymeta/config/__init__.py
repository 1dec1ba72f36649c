"""The one typed experiment schema, and its layered loader.

Layers, later wins: schema defaults -> YAML file -> ``key=value`` dotted overrides.
The checks are pydantic's (``extra="forbid"``, so an unknown key is an error); every
failure is re-raised as a one-line :class:`~raymeta.errors.ConfigError` naming the key.
The fully resolved config is written next to every run's outputs (:func:`save_config`),
secrets redacted, and reloads as the same run.

One module per part of the schema, each importing only those before it:

- :mod:`.base`: the strict base model and the names the sections share;
- :mod:`.tasks`: ``tasks`` (source, episode) and ``model``;
- :mod:`.meta`: ``meta`` (algorithm, prototype metric, ridge / SVM / MetaOptNet heads,
  weighting) and ``optim``;
- :mod:`.evaluation`: ``eval`` (evaluation, meta-validation) and ``benchmark``;
- :mod:`.resources`: ``resources``, ``checkpoint`` and ``tune``;
- :mod:`.experiment`: :class:`ExperimentConfig`, every section;
- :mod:`.redaction`: secrets out of what is saved or logged;
- :mod:`.loading`: YAML, overrides, one-line errors, :func:`load_config` and :func:`save_config`;
- :mod:`.resolve`: :func:`~raymeta.config.resolve.resolve`, everything a run derives from its
  config (held-out classes, ``best``, its actors), once. It reads the tasks' labels, so it is
  imported from its module and not re-exported here: the schema stays free of the data layer.

This package re-exports the names the rest of raymeta imports; the other ones live in their module.
"""

from .base import ALGORITHMS, EMBEDDING_CLASSIFIERS, EVAL_METHODS
from .evaluation import (
    EpisodicProtocol,
    EvalConfig,
    FastfitConfig,
    SetfitConfig,
    ValidationSetting,
)
from .experiment import ExperimentConfig
from .loading import (
    apply_overrides,
    check_task,
    config_yaml,
    load_config,
    parse_overrides,
    save_config,
)
from .meta import LabelPriorConfig, MetaConfig, MetaOptConfig, ProtoConfig, RidgeConfig, SvmConfig
from .redaction import is_secret_key, redact
from .resources import ResourcesConfig
from .tasks import EpisodeConfig, ModelConfig, SourceConfig, TaskConfig

__all__ = [
    "ALGORITHMS",
    "EMBEDDING_CLASSIFIERS",
    "EVAL_METHODS",
    "SourceConfig",
    "EpisodeConfig",
    "TaskConfig",
    "ModelConfig",
    "LabelPriorConfig",
    "ProtoConfig",
    "RidgeConfig",
    "SvmConfig",
    "MetaOptConfig",
    "MetaConfig",
    "ResourcesConfig",
    "EpisodicProtocol",
    "ValidationSetting",
    "FastfitConfig",
    "SetfitConfig",
    "EvalConfig",
    "ExperimentConfig",
    "load_config",
    "parse_overrides",
    "apply_overrides",
    "check_task",
    "config_yaml",
    "save_config",
    "redact",
    "is_secret_key",
]
