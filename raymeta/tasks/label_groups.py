"""Many tasks from one labelled dataset: ``tasks[].label_groups: k`` splits a classification task's
classes into k seeded, disjoint groups, each a task of its own (``<name>_g<i>``); named groups,
``label_groups: {group: [labels]}`` or a JSON file of that mapping (CLINC150's ``domains.json``:
its 10 domains), make a task ``<name>_<group>`` of each group.

Meta-learning over many tasks makes them from a few datasets this way: Triantafillou et al. (2020,
Meta-Dataset) and Bansal et al. (2020, LEOPARD) sample episodes from class subsets, and Ye et al.
(2021, CrossFit) and Min et al. (2022, MetaICL) count a dataset's label groups as tasks. Here each
group is a task with its own actor key, head, episodes and mixture weight (the parent's weight
shared equally), so ``meta.task_batch`` samples among them and ``resources.workers`` holds them on a
few processes. The groups depend on ``(seed, task)`` alone; the resolved ``config.yaml`` lists each
group's classes (``include_labels``), so it reloads as the same run.

Named groups keep, of each group, the classes the task has (after ``holdout_classes``: a domain
held out whole leaves an empty group, which is no task); classes in no group are not trained on; a
label in two groups, or a group left with fewer classes than its episodes' ways, is one line.

``tasks[].split_by: COLUMN`` makes a task of each value of a source column (a domain, a source, a
product), any task type: ``<name>_<value>`` keeps the rows whose column holds the value
(``where``), resolved before the label groups, so that a part can be grouped further.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from typing import Any, Callable

import numpy as np
from pydantic import ValidationError

from ..config import ExperimentConfig, TaskConfig
from ..errors import ConfigError
from .base import columns, natural_sort
from .holdout import task_labels
from .sources import existing_file, load_raw, require_source_column

log = logging.getLogger(__name__)

__all__ = ["resolve_column_splits", "resolve_label_groups", "label_groups", "named_groups"]

_STREAM = 0x6C67  # separates these draws from every other stream seeded by (seed, task)


def label_groups(task: str, labels: list[str], k: int, seed: int) -> list[list[str]]:
    """``labels`` in ``k`` disjoint groups whose sizes differ by one at most: a seeded permutation
    dealt round-robin, each group in the labels' own order."""
    perm = np.random.default_rng([_STREAM, seed, zlib.crc32(task.encode())]).permutation(
        len(labels))
    groups = [sorted(int(i) for i in perm[g::k]) for g in range(k)]
    return [[labels[i] for i in g] for g in groups]


def named_groups(spec: TaskConfig, labels: list[str], data_dir: str, ways: int,
                 key: str) -> dict[str, list[str]]:
    """``spec.label_groups`` as written ({group: [labels]}, or the JSON file of one it names,
    resolved as ``source.files`` are): group -> the task's ``labels`` in it, in the task's order;
    empty groups left out. One line naming the key for a bad file, a group name that cannot be
    part of a task name, a label in two groups, or a group with fewer classes than ``ways``."""
    mapping: Any = spec.label_groups
    where = f"config key '{key}'"
    if isinstance(mapping, str):
        path = existing_file(mapping, spec.source, data_dir, spec.name)
        where += f" ({path})"
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{where}: not a readable JSON file ({e})") from None
    if (not isinstance(mapping, dict) or not mapping
            or not all(isinstance(v, list) for v in mapping.values())):
        raise ConfigError(f"{where}: expected an object group -> [labels]")
    owner: dict[str, str] = {}
    for group, members in mapping.items():
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(group)):
            raise ConfigError(f"{where}: group name {group!r} cannot be part of a task name "
                              "(letters, digits, '_', '.', '-')")
        for label in map(str, members):
            if label in owner:
                raise ConfigError(f"{where}: label '{label}' is in groups '{owner[label]}' and "
                                  f"'{group}'")
            owner[label] = str(group)
    out: dict[str, list[str]] = {}
    for group in map(str, mapping):
        kept = [c for c in labels if owner.get(c) == group]
        if kept and len(kept) < ways:
            raise ConfigError(f"{where}: group '{group}' of task '{spec.name}' has "
                              f"{len(kept)} classes, fewer than its episodes' {ways} ways")
        if kept:
            out[group] = kept
    if not out:
        raise ConfigError(f"{where}: no group holds any of task '{spec.name}''s classes")
    return out


def _expand(cfg: ExperimentConfig, field: str,
            parts: Callable[[TaskConfig], list[dict[str, Any]]]) -> ExperimentConfig:
    """``cfg`` with each task that sets ``field`` replaced by its ``parts`` (task dicts), the others
    as they are; ``cfg`` itself when none sets it. A part whose name is configured already, or made
    twice, is one line naming the key."""
    if not any(getattr(t, field) for t in cfg.tasks):
        return cfg
    names = {t.name for t in cfg.tasks}
    tasks: list[dict[str, Any]] = []
    for spec in cfg.tasks:
        if not getattr(spec, field):
            tasks.append(spec.model_dump(mode="json"))
            continue
        for part in parts(spec):
            if part["name"] in names:
                raise ConfigError(f"config key 'tasks.{spec.name}.{field}': it makes task "
                                  f"'{part['name']}', a name another task or part has already")
            names.add(part["name"])
            tasks.append(part)
    data = cfg.model_dump(mode="json")
    data["tasks"] = tasks
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"config key 'tasks': {e.errors()[0]['msg']}") from None


def resolve_label_groups(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with each task that has ``label_groups`` replaced by its groups' tasks (the others as
    they are); one line naming the task when a group would have fewer classes than its episodes'
    ways, or a group's name is taken."""

    def groups_of(spec: TaskConfig) -> list[dict[str, Any]]:
        key = f"tasks.{spec.name}.label_groups"
        labels = task_labels(spec, cfg.data_dir, cfg.cache_dir)
        ways = (spec.episode or cfg.meta.episode).ways or 2
        if isinstance(spec.label_groups, int):
            k = spec.label_groups
            if len(labels) // k < ways:
                raise ConfigError(f"config key '{key}': task '{spec.name}' has {len(labels)} "
                                  f"classes; {k} groups leave {len(labels) // k} in the smallest, "
                                  f"fewer than its episodes' {ways} ways")
            width = len(str(k - 1))
            groups = {f"g{i:0{width}d}": g
                      for i, g in enumerate(label_groups(spec.name, labels, k, cfg.seed))}
        else:
            groups = named_groups(spec, labels, cfg.data_dir, ways, key)
            k = len(groups)
        out = []
        for i, (group_name, group) in enumerate(groups.items()):
            data = spec.model_dump(mode="json")
            keep = set(group)
            data.update(name=f"{spec.name}_{group_name}", include_labels=group,
                        weight=spec.weight / k, label_groups=None,
                        labels=None if spec.labels is None else [c for c in spec.labels
                                                                 if c in keep],
                        description=f"classes {i + 1} of {k} of {spec.name} ({len(group)})"
                        if isinstance(spec.label_groups, int)
                        else f"{group_name} classes of {spec.name} ({len(group)})")
            out.append(data)
        return out

    return _expand(cfg, "label_groups", groups_of)


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", value.strip()).strip("_") or "_"


def _corpus_name(entry: Any, i: int) -> str:
    if isinstance(entry, str):
        return _slug(entry.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    if isinstance(entry, dict) and isinstance(entry.get("use") or entry.get("name"), str):
        return _corpus_name(entry.get("use") or entry.get("name"), i)
    return f"s{i}"


def _smlmt_per_source(spec: TaskConfig, key: str) -> list[dict[str, Any]]:
    """An SMLMT task with ``split_by: corpus`` as one SMLMT task per source it reads (Bansal et
    al. 2020 build their tasks per source of text too), ``<name>_<source>``, weight shared."""
    corpus = spec.source.corpus
    if len(corpus) < 2:
        raise ConfigError(f"config key '{key}': task '{spec.name}' reads one source; split_by: "
                          "corpus needs two or more")
    out = []
    for i, entry in enumerate(corpus):
        data = spec.model_dump(mode="json")
        data["source"]["corpus"] = [entry]
        data.update(name=f"{spec.name}_{_corpus_name(entry, i)}", split_by=None,
                    weight=spec.weight / len(corpus),
                    description=f"SMLMT over source {i + 1} of {len(corpus)} of {spec.name}")
        out.append(data)
    return out


def resolve_column_splits(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with each task that has ``split_by: COLUMN`` replaced by a task ``<name>_<value>``
    per value of that column in its train split (in natural order), each keeping its rows
    (``where``) and an equal share of the weight. A classification part with fewer classes than
    its episodes' ways is left out (one log line says which); one line when none is left, the
    column is missing, or two values make one task name."""

    def parts_of(spec: TaskConfig) -> list[dict[str, Any]]:
        column, key = str(spec.split_by), f"tasks.{spec.name}.split_by"
        if spec.source.kind == "smlmt":
            return _smlmt_per_source(spec, key)
        train = load_raw(spec, cfg.data_dir, cfg.cache_dir)["train"]
        require_source_column(train, spec, column, "split_by", "train")
        labelled = spec.type == "sequence_classification" and "label" in train.column_names
        got = columns(train, *([column, "label"] if labelled else [column]))
        classes: dict[str, set[str]] = {}  # value -> the classes of its rows
        for i, v in enumerate(got[column]):
            classes.setdefault(str(v), set()).update([str(got["label"][i])] if labelled else [])
        ways = (spec.episode or cfg.meta.episode).ways or 2
        keep = [v for v in natural_sort(classes) if not labelled
                or len(classes[v] & set(spec.include_labels or classes[v])) >= ways]
        if dropped := [v for v in classes if v not in keep]:
            log.info("task '%s': split_by %s leaves out %d value(s) with fewer than %d classes "
                     "(%s)", spec.name, column, len(dropped), ways, ", ".join(dropped[:5]))
        if not keep:
            raise ConfigError(f"config key '{key}': no value of column '{column}' of task "
                              f"'{spec.name}' has {ways} classes, its episodes' ways")
        out = []
        for value in keep:
            data = spec.model_dump(mode="json")
            data.update(name=f"{spec.name}_{_slug(value)}", split_by=None,
                        where={**(spec.where or {}), column: value},
                        weight=spec.weight / len(keep),
                        description=f"{spec.name} rows with {column} = {value}")
            out.append(data)
        return out

    return _expand(cfg, "split_by", parts_of)
