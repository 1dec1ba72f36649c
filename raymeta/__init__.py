"""raymeta: meta-learning pretraining of NLP transformers on Ray.

Pipeline (arrows point one way)::

    configs/*.yaml -> config.load_config() -> ExperimentConfig (checked; resolved copy saved)
        tasks.load_task(spec)      -> Arrow rows -> tokenised features -> seeded episodes
        core.model.MetaModel       -> shared encoder (AutoModel) + one head per task
        train.trainer.MetaTrainer  -> one TaskActor per task on Ray -> <output_dir>/final (and best)
        eval.evaluate.evaluate     -> few-shot scores of an init on held-out tasks

The folders are layers (docs/layout.md; tests/unit/test_structure.py holds the rules).
"""

__version__ = "0.1.0"

from .config import ExperimentConfig, TaskConfig, load_config, save_config  # noqa: E402
from .errors import ConfigError, DataError, ModelError, RaymetaError  # noqa: E402
from .tasks import Episode, Task, load_task, task_config  # noqa: E402

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "Episode",
    "ExperimentConfig",
    "ModelError",
    "RaymetaError",
    "Task",
    "TaskConfig",
    "load_config",
    "load_task",
    "save_config",
    "task_config",
]
