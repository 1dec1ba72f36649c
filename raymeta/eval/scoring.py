"""The episodic score of meta-validation and of ``raymeta tune``: one scorer, one protocol.

Meta-validation (``eval.validation``, :mod:`raymeta.train.validation`, scored on the task actors)
picks ``<output_dir>/best``; ``raymeta tune`` (:mod:`raymeta.tune.scoring`) ranks trials. Both ask
the same question (how well does this encoder's embedding space separate classes it never trained
on), so both compute it here, under one :class:`~raymeta.config.EpisodicProtocol`: a fixed seeded
subsample of at most ``max_rows_per_class`` rows per class (:func:`choose_rows`), embedded in eval
mode, then ``episodes`` seeded N-way K-shot episodes scored by the prototype classifier (Snell et
al. 2017) with the run's ProtoNet distance (``meta.proto.distance``), or by MetaOptNet's ridge or
SVM head (``method: ridge | svm``, with ``eval.ridge`` / ``eval.svm``; :func:`score_episodes`). The
same encoder scores the same under both.

Meta-validation may score each step at several settings (``eval.validation.settings``):
:func:`setting_protocols` gives each episodic setting its protocol (the section's rows and seed, the
setting's method and sizes), and the settings of a task share its rows and so its embeddings
(:func:`embed_for_scoring`, :func:`score_embedded`).

Light on purpose (no fine-tuning, no Ray): the task actors import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from ..config import EpisodicProtocol, ExperimentConfig, TaskConfig
from ..core.model import MetaModel
from ..errors import DataError
from ..tasks import Task, load_task
from .episodic import (
    EpisodicResult,
    embed_label_names,
    embed_rows,
    episodic_accuracy,
    subsample_per_class,
)

__all__ = ["EpisodicProtocol", "ValidationScorer", "check_class_counts", "choose_rows",
           "embed_for_scoring", "protocol", "score_embedded",
           "score_episodes", "setting_protocols"]

# The rows' random stream is drawn from [seed, ROWS_STREAM], one per task (not one stream across the
# tasks), so a task's rows do not depend on which other tasks are scored with it, nor on which actor
# scores it.
ROWS_STREAM = 7


def protocol(cfg: ExperimentConfig, section: Literal["validation", "tune"]) -> EpisodicProtocol:
    """The protocol of ``eval.validation`` (``section="validation"``) or of ``tune`` (``"tune"``):
    that section's episode sizes and rows, the run's seed, and its ProtoNet metric
    (``meta.proto``)."""
    if section == "validation":
        if cfg.eval.validation is None:
            raise ValueError("protocol('validation'): the config has no eval.validation")
        s, split, key, split_key = (cfg.eval.validation, cfg.eval.validation.split,
                                    "eval.validation", "eval.validation.split")
    elif section == "tune":
        s, split, key, split_key = (cfg.tune, cfg.tune.validation_split, "tune",
                                    "tune.validation_split")
    else:
        raise ValueError(f"protocol: unknown section '{section}' (validation or tune)")
    method = cfg.tune.method if section == "tune" \
        else cfg.eval.validation.method  # type: ignore[union-attr]
    prior = cfg.meta.proto.label_prior
    return EpisodicProtocol(ways=s.ways, shots=s.shots, queries=s.queries, episodes=s.episodes,
                            max_rows_per_class=s.max_rows_per_class, split=split, seed=cfg.seed,
                            distance=cfg.meta.proto.distance,
                            temperature=cfg.meta.proto.temperature,
                            classifier="prototype" if method == "finetune" else method,
                            ridge=cfg.eval.ridge, svm=cfg.eval.svm, key=key, split_key=split_key,
                            label_prior=cfg.meta.proto.prior_weight,
                            label_template=prior.template if prior is not None else "{name}")


def setting_protocols(cfg: ExperimentConfig) -> list[EpisodicProtocol | None]:
    """Per resolved setting of ``eval.validation``
    (:meth:`~raymeta.config.ValidationConfig.resolved_settings`), its episodic protocol, None for a
    finetune setting. Without ``settings`` this is ``[protocol(cfg, "validation")]`` as it is; with
    them, each setting's method and sizes over the section's rows and seed, and ``key`` names the
    setting (``eval.validation.settings[1]``) in error messages."""
    v = cfg.eval.validation
    if v is None:
        raise ValueError("setting_protocols: the config has no eval.validation")
    base = protocol(cfg, "validation")
    if v.settings is None:
        return [None if v.method == "finetune" else base]
    return [None if s.method == "finetune" else
            base.model_copy(update={"ways": s.ways, "shots": s.shots, "queries": s.queries,
                                    "episodes": s.episodes,
                                    "classifier": s.method,
                                    "key": f"eval.validation.settings[{i}]"})
            for i, s in enumerate(v.resolved_settings())]


def check_class_counts(task_name: str, per_class: Mapping[object, int],
                       p: EpisodicProtocol) -> None:
    """:func:`choose_rows`' rule on the rows chosen per class: at least ``ways`` classes with
    ``shots + queries``."""
    need = p.shots + p.queries
    enough = sum(1 for n in per_class.values() if n >= need)
    if enough < p.ways:
        raise DataError(task_name,
                        f"scoring needs {p.ways} classes ({p.key}.ways) with {need} rows each "
                        f"({p.key}.shots + {p.key}.queries); {enough} have that many")


def choose_rows(task: Task, p: EpisodicProtocol) -> dict[str, list[int]]:
    """A seeded subsample of at most ``p.max_rows_per_class`` rows per class over the task's splits
    (all of them, or the test split with ``split: test``), chosen once: every score of a run is on
    the same rows and the same episodes (paired across steps, trials and inits). At least ``ways``
    classes must have ``shots + queries``."""
    if p.split == "test" and "test" not in task.features:
        raise DataError(task.name,
                        f"{p.split_key}=test needs a test split (source.test_fraction or a test "
                        "file)")
    rows, per_class = subsample_per_class(task, p.max_rows_per_class,
                                          np.random.default_rng([p.seed, ROWS_STREAM]),
                                          splits=("test",) if p.split == "test" else None)
    check_class_counts(task.name, per_class, p)
    return rows


def score_episodes(model: MetaModel, task: Task, rows: dict[str, list[int]],
                   p: EpisodicProtocol) -> EpisodicResult:
    """The query accuracy of ``p.classifier`` over ``p.episodes`` seeded episodes of ``rows``, on
    ``model``'s pooled embeddings in eval mode (no dropout: a score must not depend on the random
    state), per episode in ``.values``. The model's train/eval mode is restored."""
    return score_embedded(*embed_for_scoring(model, task, rows, p), p)


def embed_for_scoring(model: MetaModel, task: Task, rows: dict[str, list[int]],
                      p: EpisodicProtocol | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray | None]:
    """``model``'s pooled embeddings of ``rows`` in eval mode (no dropout: a score must not depend
    on the random state), their class ids, and, when ``p`` has a label prior, the class names'
    embeddings (else None); the model's train/eval mode is restored. Settings over the same rows
    share them (the run's label prior is theirs too)."""
    was_training = model.training
    model.eval()
    try:
        names = embed_label_names(model, task,
                                  p.label_template) if p is not None and p.label_prior > 0 else None
        return (*embed_rows(model, task, rows), names)
    finally:
        model.train(was_training)


def score_embedded(emb: np.ndarray, ids: np.ndarray, names: np.ndarray | None,
                   p: EpisodicProtocol) -> EpisodicResult:
    """The query accuracy of ``p.classifier`` over ``p.episodes`` seeded episodes of embedded rows
    (with the label prior of ``p`` on the class names' embeddings ``names``)."""
    res = episodic_accuracy(emb, ids, ways=p.ways, shots=p.shots, queries=p.queries,
                            episodes=p.episodes, seed=p.seed,
                            distance=p.distance, temperature=p.temperature, methods=(p.classifier,),
                            ridge=p.ridge,
                            svm=p.svm, names=names,
                            prior_weight=p.label_prior if p.classifier == "prototype" else 0.0)
    return res[p.classifier]


class ValidationScorer:
    """Meta-validation on a task actor, with its model replica: per-episode accuracy on each given
    task at each episodic setting. A task's data is loaded once, and its rows once per setting
    (:func:`choose_rows` checks them against that setting's sizes), on the first validation; the
    settings of a task embed its rows once per call (they share the rows)."""

    def __init__(self, cfg: ExperimentConfig, tokenizer: object):
        self.cfg, self.tokenizer = cfg, tokenizer
        self._rows: dict[str, tuple[Task, dict[str, list[int]]]] = {}  # "task|setting" -> rows

    def score(self, model: MetaModel, specs: list[TaskConfig],
              protocols: list[EpisodicProtocol]) -> list[dict[str, list[float]]]:
        """One ``{task: values}`` per protocol, in order."""
        out: list[dict[str, list[float]]] = [{} for _ in protocols]
        for spec in specs:
            embedded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
            for p, res in zip(protocols, out):
                key = f"{spec.name}|{p.model_dump_json()}"  # rows per (task, setting)
                if key not in self._rows:
                    task = next((t for k, (t, _) in self._rows.items()
                                 if k.startswith(f"{spec.name}|")), None)
                    task = task or load_task(spec, self.tokenizer, self.cfg.data_dir,
                                             self.cfg.cache_dir)
                    self._rows[key] = (task, choose_rows(task, p))
                task, rows = self._rows[key]
                seen = repr(rows)
                if seen not in embedded:  # rows -> embeddings, this call
                    embedded[seen] = embed_for_scoring(model, task, rows, p)
                res[spec.name] = score_embedded(*embedded[seen], p).values
        return out
