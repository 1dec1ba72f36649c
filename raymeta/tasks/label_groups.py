"""Many tasks from one labelled dataset: ``tasks[].label_groups: k`` splits a classification task's
classes into k seeded, disjoint groups, each a task of its own (``<name>_g<i>``).

Meta-learning over many tasks makes them from a few datasets this way: Triantafillou et al. (2020,
Meta-Dataset) and Bansal et al. (2020, LEOPARD) sample episodes from class subsets, and Ye et al.
(2021, CrossFit) and Min et al. (2022, MetaICL) count a dataset's label groups as tasks. Here each
group is a task with its own actor key, head, episodes and mixture weight (the parent's weight
shared equally), so ``meta.task_batch`` samples among them and ``resources.workers`` holds them on a
few processes. The groups depend on ``(seed, task)`` alone; the resolved ``config.yaml`` lists each
group's classes (``include_labels``), so it reloads as the same run.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from pydantic import ValidationError

from ..config import ExperimentConfig
from ..errors import ConfigError
from .holdout import task_labels

__all__ = ["resolve_label_groups", "label_groups"]

_STREAM = 0x6C67  # separates these draws from every other stream seeded by (seed, task)


def label_groups(task: str, labels: list[str], k: int, seed: int) -> list[list[str]]:
    """``labels`` in ``k`` disjoint groups whose sizes differ by one at most: a seeded permutation
    dealt round-robin, each group in the labels' own order."""
    perm = np.random.default_rng([_STREAM, seed, zlib.crc32(task.encode())]).permutation(
        len(labels))
    groups = [sorted(int(i) for i in perm[g::k]) for g in range(k)]
    return [[labels[i] for i in g] for g in groups]


def resolve_label_groups(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with each task that has ``label_groups`` replaced by its groups' tasks (the others as
    they are); one line naming the task when a group would have fewer classes than its episodes'
    ways, or a group's name is taken."""
    if not any(t.label_groups for t in cfg.tasks):
        return cfg
    names = {t.name for t in cfg.tasks}
    tasks: list[dict[str, Any]] = []
    for spec in cfg.tasks:
        if not spec.label_groups:
            tasks.append(spec.model_dump(mode="json"))
            continue
        k, key = spec.label_groups, f"tasks.{spec.name}.label_groups"
        labels = task_labels(spec, cfg.data_dir, cfg.cache_dir)
        ways = (spec.episode or cfg.meta.episode).ways or 2
        if len(labels) // k < ways:
            raise ConfigError(f"config key '{key}': task '{spec.name}' has {len(labels)} classes; "
                              f"{k} groups leave {len(labels) // k} in the smallest, fewer than "
                              f"its episodes' {ways} ways")
        width = len(str(k - 1))
        for i, group in enumerate(label_groups(spec.name, labels, k, cfg.seed)):
            name = f"{spec.name}_g{i:0{width}d}"
            if name in names:
                raise ConfigError(f"config key '{key}': group {i} of task '{spec.name}' is task "
                                  f"'{name}', but a task of that name is configured already")
            data = spec.model_dump(mode="json")
            keep = set(group)
            data.update(name=name, include_labels=group, weight=spec.weight / k, label_groups=None,
                        labels=None if spec.labels is None else [c for c in spec.labels
                                                                 if c in keep],
                        description=f"classes {i + 1} of {k} of {spec.name} ({len(group)})")
            tasks.append(data)
    data = cfg.model_dump(mode="json")
    data["tasks"] = tasks
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"config key 'tasks': {e.errors()[0]['msg']}") from None
