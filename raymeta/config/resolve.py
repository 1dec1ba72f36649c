"""``resolve(cfg)``: everything a run derives from its config, in one step.

``raymeta train``, ``tune`` and ``benchmark`` call it once, before Ray starts, and the trainer
takes what it returns (calling it again on a resolved config changes nothing):

- the checks that span sections (``tasks``, ``meta``, ``checkpoint``): one line each;
- ``eval.validation.holdout_classes``: the tasks restricted to their kept classes and the held
  ones as validation tasks (:func:`raymeta.tasks.holdout.resolve_holdout`, which reads the tasks'
  labels; that is why this module, alone in the package, imports the data layer);
- ``tasks[].split_by``: a task split into tasks over the rows of each value of a column
  (:func:`raymeta.tasks.label_groups.resolve_column_splits`);
- ``tasks[].label_groups``: a task split into tasks over disjoint groups of its classes
  (:func:`raymeta.tasks.label_groups.resolve_label_groups`, after the held-out classes);
- whether the run exports ``best`` (:func:`wants_best`);
- the task actors a config asks for (:func:`actor_keys`).

The resolved config is what a run saves as ``config.yaml``, so the saved config reloads as the
same run and never resolves twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .experiment import ExperimentConfig

__all__ = ["ResolvedRun", "resolve", "wants_best", "replica_key", "actor_keys", "check_run"]


@dataclass(frozen=True)
class ResolvedRun:
    cfg: ExperimentConfig  # as the run trains with it (and saves it)
    holdout: dict[str, Any] | None  # the held-out classes' record (holdout_classes.json), or None
    export_best: bool  # whether meta-validation exports <output_dir>/best


def replica_key(task: str, replica: int) -> str:
    """The key of replica ``replica`` of ``task``: ``<task>`` for the first (0), ``<task>#<r>``
    for r = 1, 2, ... It names the replica's actor and is the stream it draws its episodes and
    dropout from (:func:`raymeta.core.seeds.step_seed`)."""
    return task if replica == 0 else f"{task}#{replica}"


def actor_keys(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """Task name -> the keys of its task actors, ``<task>`` then ``<task>#<r>`` for replicas
    r = 1, 2, ...; a task with mixture weight 0 gets none."""
    return {t.name: [replica_key(t.name, r) for r in range(t.replicas)]
            for t in cfg.tasks if t.weight > 0}


def wants_best(cfg: ExperimentConfig) -> bool:
    """Whether the run exports ``best``; asking for it without validation tasks is a config
    error."""
    if cfg.checkpoint.best and cfg.eval.validation is None:
        raise ConfigError("config key 'checkpoint.best': choosing the best step needs validation "
                          "tasks (eval.validation.tasks, or eval.validation.holdout_classes)")
    return cfg.eval.validation is not None and cfg.checkpoint.best is not False


def check_run(cfg: ExperimentConfig) -> None:
    """The checks that span sections, one line each, before anything starts."""
    if not cfg.tasks:
        raise ConfigError("config key 'tasks': no meta-training task given")
    if cfg.meta.algorithm == "reptile" and cfg.meta.inner_steps == 0:
        raise ConfigError("config key 'meta.inner_steps': reptile needs at least 1 inner step "
                          "(got 0)")
    if cfg.meta.reduce == "collective" and cfg.meta.combine == "pcgrad":
        raise ConfigError("config key 'meta.combine': pcgrad needs every task's gradient in one "
                          "place; use meta.reduce=driver")
    wants_best(cfg)
    n = sum(len(ks) for ks in actor_keys(cfg).values())
    w = cfg.resources.workers
    if isinstance(w, int) and w < n:
        if cfg.meta.reduce == "collective":
            raise ConfigError(f"config key 'resources.workers': {w} workers for {n} task actors "
                              "need meta.reduce=driver (a process group has one rank per task)")
        most = max(cfg.tasks, key=lambda t: t.replicas)
        if most.replicas > w:
            raise ConfigError(f"config key 'resources.workers': task '{most.name}' has "
                              f"{most.replicas} replicas, more than the {w} workers (one each)")
    fault = cfg.meta.fault_injection
    keys = [replica_key(t.name, r) for t in cfg.tasks for r in range(t.replicas)]
    if fault is not None and fault.task not in keys:
        raise ConfigError(f"config key 'meta.fault_injection.task': no task '{fault.task}' "
                          f"(tasks: {', '.join(keys)})")


def resolve(cfg: ExperimentConfig) -> ResolvedRun:
    """``cfg`` checked, with everything derived resolved (see the module's docstring)."""
    # both read the tasks' labels: only when resolving
    from ..tasks.holdout import resolve_holdout
    from ..tasks.label_groups import resolve_column_splits, resolve_label_groups

    check_run(cfg)
    resolved, holdout = resolve_holdout(cfg)
    # the rows of each value of a column, then the classes holdout_classes kept, in groups
    grouped = resolve_label_groups(resolve_column_splits(resolved))
    if grouped is not resolved:  # more task actors now: resources.workers is checked again
        check_run(grouped)
        resolved = grouped
    return ResolvedRun(cfg=resolved, holdout=holdout, export_best=wants_best(resolved))
