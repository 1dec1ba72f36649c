"""Which tasks meta-validation scores, and which the learned weights aim at: checked against
the tasks the run trains and tests on, before Ray starts.

Validation must be on tasks the run never trains or tests on (:func:`validation_specs`): a task
that shares a source with a meta-training or test task is refused unless its rows are held back
(:func:`held_back`: the same source carved the same way, with a test split) or its classes are
disjoint (``include_labels``, as ``eval.validation.holdout_classes`` makes them). The learned
weights' target tasks (``meta.weighting.target``, by default the validation tasks) follow the same
rules (:func:`target_specs`). :func:`check_validation_rows` checks that every validation task can
supply every setting's rows, counting the raw rows (no tokenizer, no model).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .. import storage
from ..config import ExperimentConfig, TaskConfig
from ..errors import ConfigError, DataError
from ..eval.scoring import check_class_counts, setting_protocols
from ..tasks.holdout import resolve_holdout
from ..tasks.registry import task_from_entry

__all__ = ["check_validation_rows", "held_back", "run_specs", "target_specs", "validation_specs"]


def _files(spec: TaskConfig) -> set[str]:
    out: set[str] = set()
    for f in spec.source.files.values():
        out.update([f] if isinstance(f, str) else f)
    if spec.source.kind == "hub":
        out.add(f"hub:{spec.source.dataset}:{spec.source.config_name}")
    if spec.source.kind == "builtin":
        out.add(f"builtin:{spec.source.name}")
    return {x if x.startswith(("hub:", "builtin:")) else storage.absolute(x) for x in out}


def held_back(spec: TaskConfig, other: TaskConfig) -> bool:
    """Whether ``spec``'s test split holds rows that meta-training on ``other`` never reads: the
    same source, carved the same way, with a test split (meta-training samples train splits
    only)."""
    has_test = spec.source.test_fraction is not None or "test" in spec.source.files
    return has_test and spec.source == other.source and spec.include_labels == other.include_labels


def _overlap(spec: TaskConfig, other: TaskConfig) -> str | None:
    """Why ``spec`` and ``other`` share data (same name; or same files and classes that meet), else
    None."""
    if spec.name == other.name:
        return "same name"
    classes_meet = spec.include_labels is None or other.include_labels is None or \
        bool(set(map(str, spec.include_labels)) & set(map(str, other.include_labels)))
    return "same files and classes" if _files(spec) & _files(other) and classes_meet else None


def _held_out_specs(cfg: ExperimentConfig, entries: list[dict[str, Any]], key: str, what: str,
                    must: str,
                    held_back_ok: bool = False) -> list[TaskConfig]:
    """``entries`` as checked task configs: classification, and disjoint from every meta-training
    task and every task the run evaluates on (``eval.tasks``, ``eval.episodic_tasks``): not the same
    name, and not the same files unless both keep disjoint classes, as
    ``huffpost_meta_{train,val,test}`` do. ``held_back_ok``: a meta-training task's held-back rows
    count as disjoint (``eval.validation.split: test``). One line naming ``key`` otherwise, ending
    in ``what`` (a wrong type) or ``must`` (an overlap)."""
    specs = [task_from_entry(e, data_dir=cfg.data_dir) for e in entries]
    tests = [task_from_entry(e, data_dir=cfg.data_dir) for e in [*cfg.eval.tasks,
                                                                 *cfg.eval.episodic_tasks]]
    for spec in specs:
        if spec.type != "sequence_classification":
            raise ConfigError(f"config key '{key}': task '{spec.name}' is {spec.type}; {what} "
                              "classification tasks")
        for role, others in (("meta-training", cfg.tasks), ("evaluation (test)", tests)):
            for other in others:
                if role == "meta-training" and held_back_ok and held_back(spec, other):
                    continue  # in-domain selection on the rows that meta-training holds back
                why = _overlap(spec, other)
                if why:
                    hint = " (or its held-back rows: eval.validation.split=test)" \
                        if key == "eval.validation.tasks" and role == "meta-training" \
                        and not held_back_ok else ""
                    raise ConfigError(f"config key '{key}': task '{spec.name}' overlaps the {role} "
                                      f"task '{other.name}' ({why}); {must}{hint}")
    return specs


def run_specs(cfg: ExperimentConfig) -> list[TaskConfig]:
    """A run's meta-training tasks and its meta-validation tasks: what ``raymeta.tasks.check_tasks``
    reads and checks before Ray starts (in seconds; the actors' loads then hit datasets' cache)."""
    return list(cfg.tasks) + (validation_specs(cfg) if cfg.eval.validation is not None else [])


def validation_specs(cfg: ExperimentConfig) -> list[TaskConfig]:
    """The validation tasks, checked (:func:`_held_out_specs`): a choice made on a test task would
    make its test score optimistic. With ``eval.validation.holdout_classes``, the held-out tasks
    that :func:`~raymeta.tasks.holdout.resolve_holdout` carves out of the meta-training tasks
    (checked against the tasks as the run trains them)."""
    cfg = resolve_holdout(cfg)[0]
    v = cfg.eval.validation
    assert v is not None
    return _held_out_specs(cfg, v.tasks, "eval.validation.tasks", "validation scores",
                           "validation must be on tasks the run never trains or tests on",
                           held_back_ok=v.split == "test")


def target_specs(cfg: ExperimentConfig) -> list[TaskConfig]:
    """``meta.weighting.rule: alignment``'s target tasks (``meta.weighting.target``, else
    ``eval.validation.tasks``), checked by the rule validation tasks follow
    (:func:`_held_out_specs`), and its floor against the tasks. One line naming the key and the task
    otherwise, before any actor starts."""
    w, key = cfg.meta.weighting, "meta.weighting.target"
    entries = w.target if w.target is not None \
        else cfg.eval.validation.tasks if cfg.eval.validation else None
    if not entries:
        raise ConfigError(f"config key '{key}': meta.weighting.rule alignment needs target tasks: "
                          "list them there, or give eval.validation.tasks (the default target)")
    specs = _held_out_specs(cfg, entries, key, "target tasks are",
                            "target tasks must be ones the run never trains or tests on")
    n = sum(1 for t in cfg.tasks if t.weight > 0)
    if w.floor > 1.0 / n:
        raise ConfigError(f"config key 'meta.weighting.floor': {w.floor} is outside [0, 1/N] = [0, "
                          f"{1.0 / n:.6g}] for the {n} meta-training tasks")
    return specs


def check_validation_rows(cfg: ExperimentConfig, specs: list[TaskConfig]) -> None:
    """Whether every validation task can supply every setting, before Ray starts:
    :func:`~raymeta.eval.scoring.choose_rows`' rule (``ways`` classes with ``shots + queries`` of
    the at most ``max_rows_per_class`` rows embedded per class) for an episodic setting,
    :func:`~raymeta.eval.evaluate.kshot_splits`' (K training rows in every class, and a test split)
    for a finetune one. It counts the raw rows (no tokenizer, no model; datasets' cache holds them
    after ``raymeta train``'s own check of the rows): a classification task keeps every row when it
    is tokenised, so these are the counts the actors see. A one-line
    :class:`~raymeta.errors.DataError` naming the task, the setting and its config key otherwise."""
    from ..tasks import load_raw

    v = cfg.eval.validation
    assert v is not None
    settings, protocols, names = v.resolved_settings(), setting_protocols(cfg), v.setting_names()
    for spec in specs:
        raw = load_raw(spec, cfg.data_dir, cfg.cache_dir)
        if any("label" not in ds.column_names for ds in raw.values()):
            continue  # a missing column: the task's own load says which, in one line
        keep = None if spec.include_labels is None else set(map(str, spec.include_labels))
        counts = {split: Counter(str(x) for x in ds["label"] if keep is None or str(x) in keep)
                  for split, ds in raw.items()}
        for i, (s, p, name) in enumerate(zip(settings, protocols, names)):
            key = "eval.validation" if v.settings is None else f"eval.validation.settings[{i}]"
            if p is not None:
                if p.split == "test" and "test" not in counts:
                    raise DataError(spec.name,
                                    f"{p.split_key}=test needs a test split (source.test_fraction "
                                    "or a test file)")
                chosen: Counter[str] = Counter()
                # as subsample_per_class caps them
                for split in sorted(["test"] if p.split == "test" else counts):
                    for c, n in counts[split].items():
                        chosen[c] = min(p.max_rows_per_class, chosen[c] + n)
                check_class_counts(spec.name, chosen, p)
                continue
            if "test" not in counts:
                raise DataError(spec.name,
                                f"setting {name} ({key}): finetune validation scores a test split "
                                "(add one, or set source.test_fraction)")
            classes = [str(c) for c in spec.labels or spec.include_labels or counts["train"]]
            short = [c for c in classes if counts["train"][c] < (s.shots or 0)]
            if short:
                raise DataError(spec.name,
                                f"setting {name} ({key}.shots): K={s.shots} but class '{short[0]}' "
                                f"has only {counts['train'][short[0]]} training rows")
