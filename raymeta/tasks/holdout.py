"""``eval.validation.holdout_classes: f``: validation on classes that meta-training never sees,
carved out of the meta-training tasks themselves.

The in-domain recipe is then one config: a user's classification tasks in, an encoder out, with
``best`` chosen on classes it never trained on. For each meta-training ``sequence_classification``
task, a seeded fraction ``f`` of its classes is held back (:func:`split_classes`): the task is
meta-trained on the others (``include_labels``: its rows of the held classes are filtered out before
any episode is drawn), and one validation task per such task, ``<task>_holdout``, reads the same
source restricted to the held classes. The two are class-disjoint, which is what the validation
layer's overlap rule (same files, disjoint ``include_labels``) accepts, as it does for
``huffpost_meta_{train,val}``.

Which tasks take part, and why:

- ``sequence_classification`` tasks of a real source (files, hub, builtin), with mixture weight > 0:
  their classes are fixed sets of labelled rows, so holding some back holds back every row of them.
- not SMLMT (``source.kind: smlmt``): its classes are words drawn from other tasks' text, not
  labels; holding back words would not keep any labelled class away from meta-training, and its
  episodes would change meaning. (An SMLMT task whose corpus names a task that holds classes back
  reads that source's text, held classes' rows included, as sentences to mask words in: their text,
  never their labels.)
- not ``token_classification``, ``extractive_qa``, ``multiple_choice``: their tags, spans or choices
  are shared by every row, there are no task-level classes to hold back, and validation scores
  classification tasks only.
- not a task of weight 0: it is not meta-trained (it has no actor), so it has nothing to hold back
  from.

``eval.validation.tasks`` and ``holdout_classes`` exclude each other (a config check): with explicit
validation tasks, today's rules stay, unchanged.

The split is a pure function of ``(run seed, task name, the task's classes, f)``: numpy's
``default_rng`` seeded with the crc32 of the task name (never Python's ``hash()``, which is salted
per process), the same in every process and on every resume. :func:`resolve_holdout` turns a config
with the key into the config the run trains with: its tasks restricted to their kept classes, the
held-out validation tasks listed in ``eval.validation.tasks`` and ``holdout_classes`` cleared. That
resolved config is what the trainer saves as ``config.yaml`` (as it saves ``meta.reduce: auto``'s
choice), so the saved config reloads as the same run and never resolves twice; the choice itself
(the fraction, the seed, and per task its kept and held classes and its validation task) goes to
``<output_dir>/holdout_classes.json``, and a ``--resume`` that would hold back other classes is
refused (:func:`check_same_holdout`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from ..config import ExperimentConfig, TaskConfig
from ..errors import ConfigError
from .base import columns, natural_sort, require_columns
from .sources import load_raw

__all__ = ["HOLDOUT_JSON", "HOLDOUT_SUFFIX", "check_same_holdout", "holdout_reason",
           "resolve_holdout", "split_classes",
           "task_labels"]

HOLDOUT_JSON = "holdout_classes.json"  # in <output_dir>: which classes of which task were held back
HOLDOUT_SUFFIX = "_holdout"  # a held-out validation task is named <task>_holdout
KEY = "eval.validation.holdout_classes"
# this draw's own stream, apart from the episodes' (seed, task, step)
_STREAM = zlib.crc32(b"holdout_classes")


def split_classes(task: str, labels: Sequence[str], fraction: float, seed: int) -> tuple[list[str],
                                                                                         list[str]]:
    """``(kept, held)``: a seeded ``fraction`` of ``labels`` held back, at least one,
    ``round(fraction x n)`` (halves up) otherwise. Deterministic in ``(seed, task, set(labels),
    fraction)``: the order the labels come in does not matter, and a Python process's hash salt does
    not either. Both lists keep the labels' natural order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    classes = natural_sort({str(x) for x in labels})
    n_held = max(1, math.floor(round(fraction * len(classes), 9) + 0.5))
    rng = np.random.default_rng([seed, _STREAM, zlib.crc32(task.encode("utf-8"))])
    held = set(classes[i] for i in rng.permutation(len(classes))[:n_held])
    return [c for c in classes if c not in held], [c for c in classes if c in held]


def holdout_reason(spec: TaskConfig) -> str | None:
    """Why ``spec`` keeps all its classes under ``holdout_classes`` (see the module's docstring), or
    None: it takes part."""
    if spec.type != "sequence_classification":
        return f"{spec.type}: no classes to hold back"
    if spec.source.kind == "smlmt":
        return "SMLMT: its classes are words, not labelled classes"
    if spec.weight == 0:
        return "weight 0: not meta-trained"
    return None


def task_labels(spec: TaskConfig, data_dir: str, cache_dir: str | None = None) -> list[str]:
    """A classification task's classes, as loading it gives them: ``include_labels`` (a
    class-disjoint split of its own), else ``labels``, else every label of its train split, in
    natural order."""
    if spec.include_labels is not None:
        return list(spec.include_labels)
    if spec.labels is not None:
        return list(spec.labels)
    train = load_raw(spec, data_dir, cache_dir)["train"]
    require_columns(train, spec, ("label",), "train")
    return natural_sort({str(v) for v in columns(train, "label")["label"]})


def _restricted(spec: TaskConfig, classes: list[str], **changes: Any) -> dict[str, Any]:
    """``spec`` as a task dict keeping only ``classes`` (``include_labels``; a ``labels`` list
    filtered the same)."""
    keep = set(classes)
    data = spec.model_dump(mode="json")
    data.update(include_labels=classes,
                labels=None if spec.labels is None else [c for c in spec.labels if c in keep],
                **changes)
    return data


def resolve_holdout(cfg: ExperimentConfig) -> tuple[ExperimentConfig, dict[str, Any] | None]:
    """``cfg`` as the run trains with it, and the choice to save (None without ``holdout_classes``:
    ``cfg`` itself).

    Every meta-training task that takes part (:func:`holdout_reason`) keeps its ``(1 - f)`` share of
    classes; a task ``<task>_holdout`` of its held classes per such task becomes a validation task.
    One line naming the key and the task otherwise, before Ray starts: no task takes part; a task
    would keep fewer classes than its meta-training episodes' ways (``tasks.<t>.episode``, else
    ``meta.episode``; with ``ways: null``, two), or hold back fewer than the ways of an episodic
    validation setting (two for a finetune one); a held-out task's name is taken."""
    v = cfg.eval.validation
    if v is None or v.holdout_classes is None:
        return cfg, None
    f = v.holdout_classes
    taking = [t for t in cfg.tasks if holdout_reason(t) is None]
    if not taking:
        raise ConfigError(f"config key '{KEY}': no meta-training task to hold classes back from "
                          "(it takes "
                          "sequence_classification tasks of weight > 0 that are not SMLMT)")
    evaluated = [*cfg.eval.tasks, *cfg.eval.episodic_tasks]
    taken = {t.name for t in cfg.tasks} | {str(e.get("name") or e.get("use")) for e in evaluated}
    settings = v.resolved_settings()
    val_ways = max([int(s.ways or 2) for s in settings if s.method != "finetune"] + [2])
    val_key = "eval.validation.ways" if v.settings is None else "eval.validation.settings"
    tasks: list[dict[str, Any]] = []
    held_tasks: list[dict[str, Any]] = []
    record: dict[str, Any] = {"holdout_classes": f, "seed": cfg.seed, "tasks": {}, "unchanged": {}}
    for spec in cfg.tasks:
        why = holdout_reason(spec)
        if why is not None:
            tasks.append(spec.model_dump(mode="json"))
            record["unchanged"][spec.name] = why
            continue
        labels = task_labels(spec, cfg.data_dir, cfg.cache_dir)
        kept, held = split_classes(spec.name, labels, f, cfg.seed)
        ways = (spec.episode or cfg.meta.episode).ways
        train_ways = 2 if ways is None else ways
        where = (f"tasks.{spec.name}.episode.ways" if spec.episode is not None
                 else "meta.episode.ways")
        has = (f"config key '{KEY}': task '{spec.name}' has {len(labels)} classes, and holding "
               f"back {f:g} of them")
        if len(kept) < train_ways:
            raise ConfigError(f"{has} leaves {len(kept)} to meta-train on, fewer than its "
                              f"{train_ways} ways ({where})")
        if len(held) < val_ways:
            raise ConfigError(f"{has} holds back {len(held)}, fewer than the {val_ways} ways "
                              f"validation scores ({val_key})")
        name = spec.name + HOLDOUT_SUFFIX
        if name in taken:
            raise ConfigError(f"config key '{KEY}': the held-out classes of task '{spec.name}' "
                              "make a validation "
                              f"task '{name}', but a task of that name is configured already")
        tasks.append(_restricted(spec, kept))
        held_tasks.append(_restricted(spec, held, name=name, weight=1.0, episode=None, replicas=1,
                                      resources={},
                                      description=f"the classes of {spec.name} held back by {KEY}"))
        record["tasks"][spec.name] = {"validation_task": name, "classes": len(labels), "kept": kept,
                                      "held": held}
    data = cfg.model_dump(mode="json")
    data["tasks"] = tasks
    data["eval"]["validation"].update(tasks=held_tasks, holdout_classes=None)
    try:
        resolved = ExperimentConfig.model_validate(data)
    except ValidationError as e:  # e.g. select: no_harm with a single held-out task and one episode
        raise ConfigError(f"config key '{KEY}': "
                          f"{e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return resolved, record


def check_same_holdout(saved: dict[str, Any], record: dict[str, Any]) -> None:
    """A resumed run holds back what it held back before: ``saved`` (its ``holdout_classes.json``)
    against this resolution's ``record``. The split is deterministic, so only a changed config or
    changed data differ; one line naming the first difference then."""
    again = "resume with the run's own config.yaml, or start over (--overwrite)"
    for key in ("holdout_classes", "seed"):
        if saved.get(key) != record[key]:
            raise ConfigError(f"--resume: the run held back classes with {key} {saved.get(key)} "
                              f"({HOLDOUT_JSON}), this config with {record[key]}; {again}")
    before, now = saved.get("tasks", {}), record["tasks"]
    for name in sorted(set(before) | set(now)):
        was, would = before.get(name, {}).get("held"), now.get(name, {}).get("held")
        if was != would:
            raise ConfigError(f"--resume: task '{name}': the run held back classes {was} "
                              f"({HOLDOUT_JSON}), this resume "
                              f"would hold back {would} (its tasks or data changed); {again}")
