"""Meta-validation scoring for ``raymeta tune``: the episodic prototype score of
:mod:`raymeta.eval.scoring`, the scorer and protocol that meta-validation (``eval.validation``,
which picks ``best``) uses too, under ``tune``'s episode sizes and the run's ``meta.proto`` metric
(no Ray). Its own module, below both
:mod:`raymeta.tune.search` (which scores each trial's checkpoints with it) and
:mod:`raymeta.tune.report` (which scores the best inits again on validation and test after the
search), so neither of those imports the other's internals.
"""

from __future__ import annotations

from typing import Any, Literal

from ..config import ExperimentConfig, TaskConfig
from ..core.model import MetaModel, load_tokenizer
from ..errors import DataError
from ..eval.episodic import EpisodicResult
from ..eval.scoring import choose_rows, protocol, score_episodes
from ..storage import local_model_path
from ..tasks import load_task
from ..tasks.registry import task_from_entry

__all__ = ["METRIC", "FewShotScorer", "task_specs", "validation_scorer"]

METRIC = "val_score"  # what each trial reports and the search maximises


def task_specs(cfg: ExperimentConfig, entries: list[dict[str, Any]]) -> list[TaskConfig]:
    """Checked task configs of ``tune.validation_tasks`` / ``tune.test_tasks`` entries."""
    return [task_from_entry(e, data_dir=cfg.data_dir) for e in entries]


class FewShotScorer:
    """Mean accuracy (``tune.method``'s classifier) over seeded N-way K-shot episodes of each
    meta-validation task (:func:`raymeta.eval.scoring.score_episodes` under
    :func:`raymeta.eval.scoring.protocol` of ``tune``).

    Rows (:func:`raymeta.eval.scoring.choose_rows`) are a seeded subsample of at most
    ``tune.max_rows_per_class`` per class (every split of the task, or only its test split with
    ``split="test"``), chosen once, so every trial and every report is scored on the same rows and
    episodes."""

    def __init__(self, cfg: ExperimentConfig, specs: list[TaskConfig],
                 split: Literal["all", "test"] = "all"):
        self.cfg, self.tasks, self.rows = cfg, [], []
        self.protocol = protocol(cfg, "tune").model_copy(update={"split": split})
        tok = load_tokenizer(cfg.model, fetch=local_model_path)
        for spec in specs:
            if spec.type != "sequence_classification":
                raise DataError(spec.name,
                                "a meta-validation task must be sequence_classification (got "
                                f"{spec.type})")
            task = load_task(spec, tok, cfg.data_dir, cfg.cache_dir)
            self.tasks.append(task)
            self.rows.append(choose_rows(task, self.protocol))

    def __call__(self, encoder: Any) -> dict[str, float]:
        """Mean accuracy per task."""
        return {name: r.mean for name, r in self.episodes(encoder).items()}

    def episodes(self, encoder: Any) -> dict[str, EpisodicResult]:
        """Per task, the :class:`~raymeta.eval.episodic.EpisodicResult` (per-episode values for
        paired CIs). The encoder is left in train mode (the trainer's)."""
        model = MetaModel(encoder, self.cfg.model.pooling)
        return {task.name: score_episodes(model, task, rows, self.protocol) for task,
                rows in zip(self.tasks, self.rows)}


def validation_scorer(cfg: ExperimentConfig) -> FewShotScorer:
    """The scorer of ``tune.validation_tasks``, on the rows ``tune.validation_split`` names."""
    return FewShotScorer(cfg, task_specs(cfg, cfg.tune.validation_tasks),
                         split=cfg.tune.validation_split)
