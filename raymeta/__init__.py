"""raymeta: meta-learning pretraining of NLP transformers on Ray.

Pipeline (arrows point one way)::

    configs/*.yaml -> config.load_config() -> ExperimentConfig (checked; resolved copy saved)
        tasks.load_task(spec)      -> Arrow rows -> tokenised features -> seeded episodes
        core.model.MetaModel       -> shared encoder (AutoModel) + one head per task
        train.trainer.MetaTrainer  -> one TaskActor per task on Ray -> <output_dir>/final (and best)
        eval.evaluate.evaluate     -> few-shot scores of an init on held-out tasks

The folders are layers (docs/layout.md; tests/unit/test_structure.py holds the rules).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .classify import Classifier, fit
    from .config import ExperimentConfig, TaskConfig, load_config, save_config
    from .errors import ConfigError, DataError, ModelError, RaymetaError
    from .tasks import Episode, Task, load_task, task_config

# name -> the module it lives in, imported on the name's first use (PEP 562): `import raymeta`, and
# so the `raymeta` command's --help, usage and config errors, load no torch, datasets or Ray.
_LAZY = {
    "ConfigError": ".errors",
    "DataError": ".errors",
    "ModelError": ".errors",
    "RaymetaError": ".errors",
    "ExperimentConfig": ".config",
    "TaskConfig": ".config",
    "load_config": ".config",
    "save_config": ".config",
    "Episode": ".tasks",
    "Task": ".tasks",
    "load_task": ".tasks",
    "task_config": ".tasks",
    "Classifier": ".classify",
    "fit": ".classify",
}

__all__ = [
    "__version__",
    "Classifier",
    "ConfigError",
    "DataError",
    "Episode",
    "ExperimentConfig",
    "fit",
    "ModelError",
    "RaymetaError",
    "Task",
    "TaskConfig",
    "load_config",
    "load_task",
    "save_config",
    "task_config",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:  # AttributeError: `from raymeta import storage` then imports the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later uses are plain attribute lookups
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
