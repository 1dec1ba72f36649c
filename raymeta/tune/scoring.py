"""Meta-validation scoring for ``raymeta tune``: prototype accuracy of seeded N-way K-shot episodes
(no Ray). Its own module, below both :mod:`raymeta.tune.search` (which scores each trial's checkpoints with
it) and :mod:`raymeta.tune.report` (which scores the best inits again on validation and test after
the search), so neither of those imports the other's internals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import ExperimentConfig, TaskConfig
from ..core.model import MetaModel, load_tokenizer
from ..errors import DataError
from ..eval.episodic import embed_rows, episodic_accuracy, subsample_per_class
from ..tasks import load_task
from ..tasks.registry import task_from_entry

__all__ = ["METRIC", "FewShotScorer", "task_specs", "validation_scorer"]

METRIC = "val_score"  # what each trial reports and the search maximises


def task_specs(cfg: ExperimentConfig, entries: list[dict[str, Any]]) -> list[TaskConfig]:
    """Validated task configs of ``tune.validation_tasks`` / ``tune.test_tasks`` entries."""
    return [task_from_entry(e, data_dir=cfg.data_dir) for e in entries]


class FewShotScorer:
    """Mean prototype accuracy over seeded N-way K-shot episodes of each meta-validation task.

    Rows are a seeded subsample of at most ``tune.max_rows_per_class`` per class (every split of the
    task, or only ``splits``), chosen once, so every trial and every report is scored on the same rows and episodes."""

    def __init__(self, cfg: ExperimentConfig, specs: list[TaskConfig], splits: tuple[str, ...] | None = None):
        t = cfg.tune
        self.cfg, self.tasks, self.rows = cfg, [], []
        tok = load_tokenizer(cfg.model)
        rng = np.random.default_rng(cfg.seed)
        for spec in specs:
            if spec.type != "sequence_classification":
                raise DataError(spec.name, f"a meta-validation task must be sequence_classification (got {spec.type})")
            task = load_task(spec, tok, cfg.data_dir, cfg.cache_dir)
            if splits is not None and not set(splits) <= set(task.features):
                raise DataError(spec.name, f"meta-validation reads its {', '.join(splits)} split(s), which it does not "
                                "have (tune.validation_split=test needs source.test_fraction or a test file)")
            rows, per_class = subsample_per_class(task, t.max_rows_per_class, rng, splits)  # one rng across the tasks
            enough = sum(1 for n in per_class.values() if n >= t.shots + t.queries)
            if enough < t.ways:
                raise DataError(spec.name, f"meta-validation needs {t.ways} classes with {t.shots + t.queries} rows "
                                f"(tune.shots + tune.queries); {enough} have that many")
            self.tasks.append(task)
            self.rows.append(rows)

    def __call__(self, encoder: Any) -> dict[str, float]:
        """Mean accuracy per task."""
        return {name: r.mean for name, r in self.episodes(encoder).items()}

    def episodes(self, encoder: Any) -> dict[str, Any]:
        """Per task, the :class:`~raymeta.eval.episodic.EpisodicResult` (per-episode values for paired CIs)."""
        t = self.cfg.tune
        model = MetaModel(encoder, self.cfg.model.pooling).eval()
        try:
            out = {}
            for task, rows in zip(self.tasks, self.rows):
                emb, ids = embed_rows(model, task, rows)
                res = episodic_accuracy(emb, ids, ways=t.ways, shots=t.shots, queries=t.queries, episodes=t.episodes,
                                        seed=self.cfg.seed)
                out[task.name] = res["prototype"]
            return out
        finally:
            encoder.train()


def validation_scorer(cfg: ExperimentConfig) -> FewShotScorer:
    """The scorer of ``tune.validation_tasks``, on the rows ``tune.validation_split`` names."""
    return FewShotScorer(cfg, task_specs(cfg, cfg.tune.validation_tasks),
                         splits=("test",) if cfg.tune.validation_split == "test" else None)
