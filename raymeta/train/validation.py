"""Meta-validation during meta-training, and the choice of ``<output_dir>/best``.

A meta-learner is meant to adapt well to *new* tasks, and its training loss does not say whether it
does: the encoder can fit its meta-training tasks while drifting away from what transfers (Murty et
al. 2021; Bansal et al. 2020 select on held-out tasks too). So the trainer scores the starting model
(step 0) and then every ``eval.validation.every_steps`` on validation tasks that are disjoint from
every meta-training task, and exports the best-scoring step, step 0 included: a run never hands back
an encoder that validates worse than the one it started from.

Two kinds of method, both the evaluation layer's own:
- ``prototype``, ``ridge``, ``svm``: the episodic score of :mod:`raymeta.eval.scoring` (seeded N-way K-shot
  episodes, over pooled embeddings of a fixed seeded subsample of rows, classified by the nearest prototype, Snell
  et al. 2017, with ``meta.proto.distance``, or by MetaOptNet's ridge or SVM head), the very scorer and protocol
  (:class:`~raymeta.config.EpisodicProtocol`) that ``raymeta tune`` ranks its trials by. It runs on the task actors,
  which already hold a replica of the model: each scores a share of the tasks, and imports only that light scorer.
- ``finetune``: K-shot fine-tuning (:func:`raymeta.eval.evaluate.evaluate`) of the exported step, as Ray tasks
  (imported when that method runs).

The pure pieces (summaries, the overlap check) need no Ray; the
:class:`Validator` that the trainer calls once per validation step does the Ray calls.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from ..config import ExperimentConfig, TaskConfig
from ..core.checkpoint import export_model
from ..errors import ConfigError
from ..eval.metrics import mean_ci95
from ..runtime import get
from ..tasks.registry import task_from_entry

__all__ = ["BEST_JSON", "Validator", "ValidationState", "summarise_scores", "held_back", "validation_specs", "wants_best"]

BEST_JSON = "raymeta_best.json"  # beside the model in <output_dir>/best: which step, which score


def wants_best(cfg: ExperimentConfig) -> bool:
    """Whether the run exports ``best``; asking for it without validation tasks is a config error."""
    if cfg.checkpoint.best and cfg.eval.validation is None:
        raise ConfigError("config key 'checkpoint.best': choosing the best step needs validation tasks "
                          "(eval.validation.tasks)")
    return cfg.eval.validation is not None and cfg.checkpoint.best is not False


def _files(spec: TaskConfig) -> set[str]:
    out: set[str] = set()
    for f in spec.source.files.values():
        out.update([f] if isinstance(f, str) else f)
    if spec.source.kind == "hub":
        out.add(f"hub:{spec.source.dataset}:{spec.source.config_name}")
    if spec.source.kind == "builtin":
        out.add(f"builtin:{spec.source.name}")
    return {x if x.startswith(("hub:", "builtin:")) or storage.is_uri(x) else str(Path(x).resolve()) for x in out}


def held_back(spec: TaskConfig, other: TaskConfig) -> bool:
    """Whether ``spec``'s test split holds rows that meta-training on ``other`` never reads: the same source, carved
    the same way, with a test split (meta-training samples train splits only)."""
    has_test = spec.source.test_fraction is not None or "test" in spec.source.files
    return has_test and spec.source == other.source and spec.include_labels == other.include_labels


def _overlap(spec: TaskConfig, other: TaskConfig) -> str | None:
    """Why ``spec`` and ``other`` share data (same name; or same files and classes that meet), else None."""
    if spec.name == other.name:
        return "same name"
    classes_meet = spec.include_labels is None or other.include_labels is None or \
        bool(set(map(str, spec.include_labels)) & set(map(str, other.include_labels)))
    return "same files and classes" if _files(spec) & _files(other) and classes_meet else None


def validation_specs(cfg: ExperimentConfig) -> list[TaskConfig]:
    """The validation tasks, checked: classification, and disjoint from every meta-training task and every
    task the run evaluates on (``eval.tasks``, ``eval.episodic_tasks``): not the same name, and not the same
    files unless both keep disjoint classes, as ``huffpost_meta_{train,val,test}`` do. A choice made on a test
    task would make its test score optimistic."""
    v = cfg.eval.validation
    assert v is not None
    specs = [task_from_entry(e, data_dir=cfg.data_dir) for e in v.tasks]
    tests = [task_from_entry(e, data_dir=cfg.data_dir) for e in [*cfg.eval.tasks, *cfg.eval.episodic_tasks]]
    for spec in specs:
        if spec.type != "sequence_classification":
            raise ConfigError(f"config key 'eval.validation.tasks': task '{spec.name}' is {spec.type}; "
                              "validation scores classification tasks")
        for role, others in (("meta-training", cfg.tasks), ("evaluation (test)", tests)):
            for other in others:
                if role == "meta-training" and v.split == "test" and held_back(spec, other):
                    continue  # in-domain selection on the rows that meta-training holds back
                why = _overlap(spec, other)
                if why:
                    raise ConfigError(f"config key 'eval.validation.tasks': task '{spec.name}' overlaps the {role} "
                                      f"task '{other.name}' ({why}); validation must be on tasks the run never "
                                      "trains or tests on" + (" (or its held-back rows: eval.validation.split=test)"
                                                              if role == "meta-training" and v.split != "test" else ""))
    return specs


def summarise_scores(per_task: dict[str, list[float]]) -> dict[str, Any]:
    """The score is the mean over tasks of each task's mean; the CI is over the pooled values
    (:func:`raymeta.eval.metrics.mean_ci95`, Student's t)."""
    means = {k: float(np.mean(v)) for k, v in per_task.items()}
    pooled = mean_ci95([x for v in per_task.values() for x in v])
    return {"score": float(np.mean(list(means.values()))), "ci95": pooled["ci95"], "tasks": means, "n": pooled["n"]}


@dataclass
class ValidationState:
    """The best step so far and how many validations since; read back from ``best`` on resume."""

    best_score: float = -math.inf
    best_step: int | None = None
    since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class Validator:
    """Scores the trainer's current parameters on the validation tasks, on Ray; keeps the best."""

    def __init__(self, cfg: ExperimentConfig, out: Path):
        self.cfg, self.v = cfg, cfg.eval.validation
        assert self.v is not None
        self.specs = validation_specs(cfg)
        self.best_dir = out / "best"
        self.export_best = wants_best(cfg)
        self.state = ValidationState()

    def due(self, step: int, last: int) -> bool:
        """Validate at step 0 (the starting model), every ``every_steps``, and at the last step."""
        assert self.v is not None
        return step == 0 or step % self.v.every_steps == 0 or step == last

    def resume(self, step: int) -> None:
        """Before the validation at ``step`` runs again after a resume or a recovery: the best so far from
        ``best/raymeta_best.json``, and how many validations came after it (those strictly between). A best
        from ``step`` on belongs to the timeline being replayed and is forgotten: the replay finds it again."""
        assert self.v is not None
        self.state = ValidationState()
        f = self.best_dir / BEST_JSON
        if not f.is_file():
            return
        rec = json.loads(f.read_text())
        if rec["step"] < step:
            self.state.best_score, self.state.best_step = float(rec["score"]), int(rec["step"])
            self.state.since_best = (step - 1) // self.v.every_steps - rec["step"] // self.v.every_steps

    def __call__(self, trainer: Any, step: int) -> dict[str, Any]:
        """Score the trainer's parameters after ``step`` meta-steps. Returns the validation record, with
        ``improved`` (export ``best`` now) and ``stop`` (early stopping: no new best for ``patience`` validations)."""
        assert self.v is not None
        t0 = time.perf_counter()
        per_task = self._finetune(trainer, step) if self.v.method == "finetune" else self._episodic(trainer)
        summary = summarise_scores(per_task)
        st = self.state
        improved = summary["score"] > st.best_score
        if improved:
            st.best_score, st.best_step, st.since_best = summary["score"], step, 0
        else:
            st.since_best += 1
        patience = self.v.early_stopping.patience if self.v.early_stopping else None
        record = {"step": step, "kind": "validation", "method": self.v.method, **summary, "seconds": time.perf_counter() - t0,
                  "best_step": st.best_step, "best_score": st.best_score, "improved": improved,
                  "stop": patience is not None and st.since_best >= patience}
        st.history.append(record)
        return record

    def _episodic(self, trainer: Any) -> dict[str, list[float]]:
        """Round-robin over the task actors: each loads the published parameters (driver mode) or uses its own
        (collective mode: they are the current ones) and scores its share of the validation tasks."""
        import ray

        actors = list(trainer.actors.values())
        shared = None if trainer.collective else ray.put(trainer.flat.numpy())
        jobs: dict[int, list[str]] = {}
        for i, spec in enumerate(self.specs):
            jobs.setdefault(i % len(actors), []).append(spec.model_dump_json())
        results = get([actors[i].validate.remote(shared, specs) for i, specs in jobs.items()])
        del shared
        out: dict[str, list[float]] = {}
        for r in results:
            out.update(r)
        return {s.name: out[s.name] for s in self.specs}  # in the configured order

    def _finetune(self, trainer: Any, step: int) -> dict[str, list[float]]:
        """K-shot fine-tuning of the step's exported encoder, as Ray tasks that reserve no CPU: the actors hold
        the reservations, and they are idle while the validation runs."""
        from ..eval.evaluate import evaluate  # the fine-tuning stack: only for this method, never on the actors
        from ..eval.finetune import FinetuneSettings

        assert self.v is not None
        e = self.cfg.eval
        tmp = trainer.out / ".validation" / f"step-{step:08d}"
        try:
            export_model(tmp, trainer.encoder, trainer.tokenizer)
            settings = FinetuneSettings(steps=e.finetune_steps, lr=e.finetune_lr, head_lr=e.head_lr, batch_size=e.batch_size,
                                        max_test=e.max_test_examples)
            res = evaluate(str(tmp), self.specs, shots=[self.v.shots], n_splits=self.v.splits, settings=settings,
                           seed=self.cfg.seed, data_dir=self.cfg.data_dir, cache_dir=self.cfg.cache_dir,
                           pooling=self.cfg.model.pooling, num_cpus_per_run=0, progress=False)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {name: list(t["shots"][str(self.v.shots)]["values"]) for name, t in res["tasks"].items()}
