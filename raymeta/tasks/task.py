"""A loaded task: checked raw rows, tokenised features (cached on disk), and episodes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..config import EpisodeConfig, TaskConfig
from ..errors import DataError
from .base import TaskProcessor, columns, require_columns
from .classification import SequenceClassification
from .episodes import Episode, sample_episode
from .multiple_choice import MultipleChoice
from .qa import ExtractiveQA
from .smlmt import apply_mask_token, check_words, word_weights
from .sources import load_raw, read_label_names
from .token_classification import TokenClassification

__all__ = ["Task", "load_task", "check_tasks", "label_name", "PROCESSORS"]

log = logging.getLogger(__name__)
FEATURES_VERSION = 1  # bump when tokenisation changes, to invalidate cached features

PROCESSORS: dict[str, TaskProcessor] = {
    "sequence_classification": SequenceClassification(),
    "token_classification": TokenClassification(),
    "extractive_qa": ExtractiveQA(),
    "multiple_choice": MultipleChoice(),
}


@dataclass
class Task:
    """What an actor owns for one task. ``labels`` is the label set (None for QA/MC)."""

    config: TaskConfig
    tokenizer: PreTrainedTokenizerBase
    labels: list[str] | None
    raw: dict[str, datasets.Dataset]
    features: dict[str, datasets.Dataset]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    _class_ids: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # SMLMT: once per split and N, K, Q
    _words_checked: set[tuple[Any, ...]] = field(default_factory=set, repr=False)
    # SMLMT: sampling: log_frequency
    _class_weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    names: dict[str, str] | None = None  # label_names, read (a file's mapping) and checked

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def processor(self) -> TaskProcessor:
        return PROCESSORS[self.config.type]

    @property
    def num_labels(self) -> int:
        """Output width of the task's head: classes, tags, 2 (QA start/end) or 1 (MC score)."""
        if self.labels is not None:
            return len(self.labels)
        return 2 if self.config.type == "extractive_qa" else 1

    def label_texts(self, template: str = "{name}",
                    class_ids: list[int] | None = None) -> list[str]:
        """Per class id of ``class_ids`` (default: every class), the text embedded for its name
        under ``template`` (:func:`label_name`; ``meta.proto.label_prior``)."""
        if self.labels is None or self.config.type != "sequence_classification":
            raise DataError(self.name,
                            "label names need a sequence_classification task; the task is "
                            f"{self.config.type}")
        ids = range(len(self.labels)) if class_ids is None else class_ids
        return [template.format(name=label_name(self.labels[c], self.names)) for c in ids]

    def label_batch(self, class_ids: list[int] | None = None,
                    template: str = "{name}") -> dict[str, Any]:
        """The tokenised label texts of ``class_ids`` (default: every class), in that order: what
        the encoder embeds for the label-name prior (an episode's: its few classes only, formatted
        and tokenised per episode)."""
        return dict(self.tokenizer(self.label_texts(template, class_ids), truncation=True,
                                   max_length=self.config.max_length, padding=True,
                                   return_tensors="pt"))

    def class_ids(self, split: str) -> np.ndarray | None:
        col = self.processor.class_column
        if col is None:
            return None
        if split not in self._class_ids:
            self._class_ids[split] = np.asarray(self.features[split].with_format("numpy")[col],
                                                dtype=np.int64)
        return self._class_ids[split]

    def batch(self, rows: list[int], split: str = "train") -> dict[str, Any]:
        # One columnar read (``ds[rows]``), then rows: ``select(rows).to_list()`` builds an indices
        # mapping per call (1.1 ms -> 0.16 ms per 4-row batch, twice per episode;
        # benchmarks/episode_time.py).
        cols = self.features[split][list(rows)]
        return self.processor.collate([dict(zip(cols, vals)) for vals in zip(*cols.values())],
                                      self.tokenizer)

    def episode(self, cfg: EpisodeConfig, seed: int, step: int, split: str = "train",
                stream: str | None = None,
                label_template: str | None = None) -> Episode:
        """The deterministic episode of ``(seed, task, step)``; labels are episode-local.
        ``stream`` (default: the task name) gives a replica of the task its own episodes.
        ``label_template``: the episode also carries its classes' tokenised names
        (:meth:`label_batch`, in episode-local order) for ``meta.proto.label_prior``."""
        cfg = self.config.episode or cfg
        checked = (split, cfg.ways, cfg.shots, cfg.queries)
        if self.config.source.kind == "smlmt" and checked not in self._words_checked:
            # too few words: one line naming the setting
            check_words(self.config, self.class_ids(split), cfg, split)
            self._words_checked.add(checked)
        if self.config.source.kind == "smlmt" and self.config.source.sampling == "log_frequency" \
                and split not in self._class_weights:
            assert self.labels is not None
            self._class_weights[split] = word_weights(self.labels, self.raw[split])
        try:
            s_rows, q_rows, classes = sample_episode(
                len(self.features[split]), self.class_ids(split), cfg, seed, stream or self.name,
                                                     step,
                self._class_weights.get(split),
            )
        except ValueError as e:
            raise DataError(self.name, f"split '{split}': {e}") from None
        support, query = self.batch(s_rows, split), self.batch(q_rows, split)
        if classes is not None:
            lut = torch.full((max(classes) + 1,), -1, dtype=torch.long)
            lut[torch.tensor(classes)] = torch.arange(len(classes))
            for b in (support, query):
                b["labels"] = lut[b["labels"]]
        names = (self.label_batch(classes, label_template)
                 if label_template is not None and classes is not None else None)
        return Episode(self.name, step, support, query, s_rows, q_rows, classes, names=names)


def label_name(label: str, names: dict[str, str] | None = None) -> str:
    """A class's name in words: ``names[label]`` (the task's ``label_names``), else the label itself
    with light normalisation (underscores as spaces, lower case: ``card_arrival`` -> "card arrival",
    ``POLITICS`` -> "politics")."""
    if names and label in names:
        return names[label]
    return " ".join(label.replace("_", " ").split()).lower()


def _check_label_names(task: TaskConfig, names: dict[str, str], labels: list[str],
                       source_labels: set[str]) -> None:
    """``label_names`` names every label of the task and, written inline, only labels of its source
    (a class that ``include_labels`` leaves out may keep its name: one mapping serves every
    class-disjoint split of a data set). A JSON file is a vocabulary the labels are looked up in
    (FewRel's pid2name.json names 744 Wikidata properties): only a label it misses is an error."""
    missing = [lab for lab in labels if lab not in names]
    if missing:
        raise DataError(task.name, f"label_names misses label '{missing[0]}'"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unknown = sorted(set(names) - set(labels) - source_labels) if isinstance(task.label_names,
                                                                             dict) else []
    if unknown:
        raise DataError(task.name,
                        f"label_names names label '{unknown[0]}', which the task does not have")


def _fingerprint(task: TaskConfig, tok: PreTrainedTokenizerBase,
                 raw: dict[str, datasets.Dataset]) -> str:
    files = sorted({f for ds in raw.values() for f in set(columns(ds, "_file")["_file"])})
    stats = []
    for f in files:
        p = Path(f)
        stats.append([f, p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [f])
    key = {
        "v": FEATURES_VERSION,
        "task": task.model_dump(mode="json", exclude={"weight", "episode", "description",
                                                      "label_names"}),
        "tokenizer": [type(tok).__name__, str(tok.name_or_path), len(tok), tok.padding_side],
        "files": stats,
        "rows": {k: len(v) for k, v in raw.items()},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True,
                                     allow_nan=False).encode()).hexdigest()[:16]


def _tokenize_cached(
    task: TaskConfig, tok: PreTrainedTokenizerBase, proc: TaskProcessor,
    raw: dict[str, datasets.Dataset], labels: list[str] | None, cache_dir: str | None,
) -> tuple[dict[str, datasets.Dataset], dict[str, dict[str, int]]]:
    """Tokenise every split once; later loads memory-map the saved Arrow files."""
    key = _fingerprint(task, tok, raw)
    root = Path(cache_dir) / "features" / task.name / key if cache_dir else None
    if root is not None and (root / "counts.json").is_file():
        counts = json.loads((root / "counts.json").read_text())
        return {s: datasets.load_from_disk(str(root / s)) for s in counts}, counts
    feats, counts = {}, {}
    for split, ds in raw.items():
        feats[split], counts[split] = proc.tokenize(ds, tok, task, labels, split,
                                                    fingerprint=f"{key}-{split}")
    if root is not None:  # write to a temp dir, then rename: a crash never leaves half a cache
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for split, ds in feats.items():
            ds.save_to_disk(str(tmp / split))
        (tmp / "counts.json").write_text(json.dumps(counts, allow_nan=False))
        try:
            os.replace(tmp, root)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
        feats = {s: datasets.load_from_disk(str(root / s)) for s in counts}
    return feats, counts


def _checked_rows(
    task: TaskConfig, data_dir: str, cache_dir: str | None,
                  tokenizer: PreTrainedTokenizerBase | None,
) -> tuple[dict[str, datasets.Dataset], list[str] | None, dict[str, str] | None]:
    """A task's raw rows, columns mapped, classes filtered, every row checked; its label set; and
    its label names (``label_names``, read and checked; None without). Without a tokenizer
    (:func:`check_tasks`), SMLMT rows keep their neutral mask."""
    proc = PROCESSORS[task.type]
    raw = load_raw(task, data_dir, cache_dir)
    # the cached rows hold a neutral mask: this
    if task.source.kind == "smlmt" and tokenizer is not None:
        raw = apply_mask_token(raw, tokenizer, task)  # tokenizer's own mask token goes in
    for split, ds in raw.items():
        require_columns(ds, task, proc.required, split)
    source_labels: set[str] = set()
    if task.include_labels is not None:
        # an inline mapping may name the classes include_labels leaves out
        if isinstance(task.label_names, dict):
            source_labels = {str(v) for ds in raw.values() for v in columns(ds, "label")["label"]}
        keep = set(task.include_labels)
        raw = {s: ds.filter(lambda b: [str(x) in keep for x in b["label"]], batched=True) for s,
               ds in raw.items()}
    for split, ds in raw.items():
        if len(ds) == 0:
            raise DataError(task.name,
                            f"split '{split}' is empty"
                            + (" after include_labels" if task.include_labels else "")
                            + (f" after where {task.where}" if task.where else ""))
    labels = task.labels or task.include_labels or proc.infer_labels(raw["train"], task)
    for ds in raw.values():
        proc.check_rows(ds, task, labels)
    names = read_label_names(task, data_dir)
    if names is not None:
        if labels is None or task.type != "sequence_classification":
            raise DataError(task.name,
                            "label_names needs a sequence_classification task; the task is "
                            f"{task.type}")
        _check_label_names(task, names, labels, source_labels)
    return raw, labels, names


def check_tasks(tasks: list[TaskConfig], data_dir: str, cache_dir: str | None = None) -> None:
    """Read and check every task's rows (files, columns, splits, labels) as :func:`load_task` does,
    without a tokenizer: the first bad one raises its one-line :class:`DataError`. The CLI runs it
    before starting Ray, so a bad row costs seconds, not a cluster start. The rows read go to
    ``datasets``' cache in ``cache_dir``, where the task actors' own loads find them."""
    datasets.disable_progress_bars() if not log.isEnabledFor(logging.DEBUG) else None
    seen: set[str] = set()
    for task in tasks:  # a task listed twice (benchmark variants, eval tasks) is read once
        key = task.model_dump_json(exclude={"weight", "episode", "description"})
        if key not in seen:
            seen.add(key)
            _checked_rows(task, data_dir, cache_dir, None)  # rows, labels and label names


def load_task(
    task: TaskConfig, tokenizer: PreTrainedTokenizerBase, data_dir: str,
              cache_dir: str | None = None
) -> Task:
    """Read, map columns, filter classes, check the rows, tokenise (cached) a task."""
    datasets.disable_progress_bars() if not log.isEnabledFor(logging.DEBUG) else None
    proc = PROCESSORS[task.type]
    raw, labels, names = _checked_rows(task, data_dir, cache_dir, tokenizer)
    features, counts = _tokenize_cached(task, tokenizer, proc, raw, labels, cache_dir)
    for split, c in counts.items():
        if c.get("dropped"):
            log.warning("task '%s' split '%s': %d rows (QA: context windows) dropped for length "
                        "(max_length=%d)",
                        task.name, split, c["dropped"], task.max_length)
        if c.get("truncated"):
            log.info("task '%s' split '%s': %d rows truncated to max_length=%d",
                     task.name, split, c["truncated"], task.max_length)
        if len(features[split]) == 0:
            raise DataError(task.name,
                            f"split '{split}' is empty after tokenisation "
                            f"(max_length={task.max_length})")
    return Task(task, tokenizer, labels, raw, features, counts, names=names)
