"""SMLMT: subset masked language modelling tasks (Bansal et al., EMNLP 2020), as a task *source*.

Bansal et al. 2020 ("Self-supervised meta-learning for few-shot natural language classification
tasks") make N-way classification tasks out of unlabelled text: pick N words, take sentences that
contain each, mask the word, and ask which of the N words was masked. Here ``source: {kind: smlmt,
from: [...]}`` produces an ordinary ``sequence_classification`` task whose classes are words, so
everything above ``tasks/`` works unchanged (every algorithm, both reduce modes, replicas, Tune
mixtures):

- the text is the train split of other sources (ready-made tasks, task YAML files, task entries over
  files or a hub dataset), read through :func:`raymeta.tasks.sources.load_raw` and split into
  sentences (deduplicated);
- the vocabulary: whole words (letters only, lower-cased; so no sub-word fragments), at least
  ``min_word_length`` long, not an English stop word (scikit-learn's list) nor in ``exclude_words``,
  occurring in at least ``min_count`` distinct sentences; the ``vocab_size`` most frequent;
- one row per (sentence, vocabulary word it contains), at most ``max_sentences_per_word`` per word
  (a seeded subsample), with *every* occurrence of the word masked (case-insensitive, whole words),
  label = the word. A sentence with several vocabulary words gives one row per word, each with only
  its own word masked, so a row never shows its label word;
- episodes are the usual seeded N-way K-shot samples of ``(seed, task, step)`` (:mod:`.episodes`):
  words drawn uniformly, or (``sampling: log_frequency``) with probability ∝ log(1 + the word's
  sentence count), a frequency-aware task distribution in the spirit of Bansal et al. 2021.

The rows are built once, in Arrow, and cached under ``cache_dir/smlmt`` (keyed by the settings and
the input files); the mask is the tokenizer's mask token, put in by :func:`apply_mask_token` when
the task is loaded (the tokenised features are then cached as for any task), or ``placeholder`` for
tokenizers without one (GPT-2). Not implemented: Bansal et al. 2021's word clustering (tasks over
clusters of related words).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from ..catalog import resolve_task_entry
from ..config import EpisodeConfig, SourceConfig, TaskConfig, check_task
from ..errors import DataError
from .base import columns
from .episodes import eligible_classes

__all__ = ["MASK", "load_smlmt", "build_rows", "split_sentences", "sentence_words", "mask_word",
           "apply_mask_token",
           "check_words", "word_weights"]

SMLMT_VERSION = 1  # bump when the rows change, to invalidate cached ones
# Stands for the mask in the cached rows (a private-use code point: never in real text), so that the
# rows do not depend on the tokenizer; apply_mask_token puts in the tokenizer's own mask token.
MASK = "\ue000"
# after . ! ? (or one closing quote or bracket after them) and a space; or a line break
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)\]])\s+|\s*\n\s*")
# Letter runs between word boundaries: "bank's" gives "bank" (and "s"), "abc123" gives nothing.
# Masking uses the same boundaries (mask_word), so every occurrence counted is an occurrence masked.
_WORD = re.compile(r"\b[^\W\d_]+\b")
# The canonical text columns of each task type: what SMLMT reads from an input task.
_TEXT_COLUMNS = {
    "sequence_classification": ("text", "text_pair"),
    "token_classification": ("tokens",),
    "extractive_qa": ("question", "context"),
    "multiple_choice": ("question", "choices"),
}

Reader = Callable[[TaskConfig, str, "str | None"], dict[str, datasets.Dataset]]


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: split after . ! ? (and a closing quote) and at line breaks (a heuristic;
    abbreviations such as "Mr." split too)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


@functools.lru_cache(maxsize=8)
def _stop_words(exclude: tuple[str, ...]) -> frozenset[str]:
    # Imported here, not at the top: scikit-learn (with SciPy) costs about a second of start-up, and
    # every task actor and CLI process imports this module while only a corpus build needs the list.
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS.union(w.lower() for w in exclude)


def sentence_words(sentence: str, src: SourceConfig) -> set[str]:
    """The lower-cased words of a sentence that may be classes: long enough, no stop words, not
    excluded."""
    stop = _stop_words(tuple(src.exclude_words))
    return {w for w in (m.group().lower() for m in _WORD.finditer(sentence))
            if len(w) >= src.min_word_length and w not in stop}


def mask_word(sentence: str, word: str, mask: str = MASK) -> str | None:
    """``sentence`` with every whole-word, case-insensitive occurrence of ``word`` replaced by
    ``mask``; None when an occurrence survives (exotic case folding), so such a row is dropped
    rather than leak its label."""
    masked = re.sub(rf"\b{re.escape(word)}\b", lambda _: mask, sentence, flags=re.IGNORECASE)
    if any(m.group().lower() == word for m in _WORD.finditer(masked)):
        return None
    return masked


def build_rows(task: TaskConfig, texts: list[tuple[str, str, int]]) -> dict[str, list[Any]]:
    """The SMLMT rows (``text`` masked, ``label`` = word, ``_count`` = the word's sentences in the
    whole corpus, ``_file``, ``_row``) of ``texts`` = (text, file, row).

    Deterministic: sentences keep their first occurrence's order, ties in frequency break
    alphabetically, and each word's subsample is seeded by ``(source.split_seed, word)``."""
    src = task.source
    lo, hi = src.sentence_words
    sentences: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    for text, file, row in texts:
        for s in split_sentences(text):
            if s not in seen and lo <= len(s.split()) <= hi:
                seen.add(s)
                sentences.append((s, file, row))
    pools: dict[str, list[int]] = {}
    for i, (s, _, _) in enumerate(sentences):
        for w in sentence_words(s, src):
            pools.setdefault(w, []).append(i)
    ranked = sorted((w for w, p in pools.items() if len(p) >= src.min_count),
                    key=lambda w: (-len(pools[w]), w))
    vocab = sorted(ranked[: src.vocab_size])
    if not vocab:
        best = max((len(p) for p in pools.values()), default=0)
        raise DataError(task.name,
                        f"SMLMT: no word occurs in source.min_count={src.min_count} sentences "
                        f"({len(sentences)} sentences, the most frequent word is in {best}): lower "
                        "source.min_count or add text to source.from")
    rows: dict[str, list[Any]] = {"text": [], "label": [], "_count": [], "_file": [], "_row": []}
    for w in vocab:
        pool = pools[w]
        if len(pool) > src.max_sentences_per_word:
            rng = np.random.default_rng([src.split_seed, zlib.crc32(w.encode("utf-8"))])
            pool = sorted(int(pool[j]) for j in rng.choice(len(pool),
                                                           size=src.max_sentences_per_word,
                                                           replace=False))
        for i in pool:
            s, file, row = sentences[i]
            masked = mask_word(s, w)
            if masked is not None:
                rows["text"].append(masked)
                rows["label"].append(w)
                rows["_count"].append(len(pools[w]))
                rows["_file"].append(file)
                rows["_row"].append(row)
    return rows


# --------------------------------------------------------------------------- reading the inputs


def _input_tasks(task: TaskConfig, data_dir: str) -> list[TaskConfig]:
    """``source.from`` as checked task configs: names and files of tasks, ``{use: ...}`` entries, or
    ``{source: ..., columns: ...}`` dicts (type defaults to sequence_classification: a text
    column)."""
    out = []
    for i, entry in enumerate(task.source.corpus):
        entry = {"use": entry} if isinstance(entry, str) else dict(entry)
        if "use" in entry:
            raw = resolve_task_entry(entry, data_dir=data_dir, base=Path("."))
        else:
            raw = {"name": f"{task.name}.from{i}", "type": "sequence_classification", **entry}
        spec = check_task(raw, origin=f"task '{task.name}': source.from[{i}]")
        if spec.source.kind == "smlmt":
            raise DataError(task.name,
                            f"source.from[{i}] ('{spec.name}') is itself an SMLMT task: give its "
                            "text sources")
        out.append(spec)
    return out


def _texts(spec: TaskConfig, ds: datasets.Dataset, owner: str) -> Iterator[tuple[str, str, int]]:
    cols = [c for c in _TEXT_COLUMNS[spec.type] if c in ds.column_names]
    if _TEXT_COLUMNS[spec.type][0] not in cols:
        shown = ", ".join(c for c in ds.column_names if not c.startswith("_"))
        raise DataError(owner,
                        f"source.from '{spec.name}' has no '{_TEXT_COLUMNS[spec.type][0]}' column "
                        f"(map it with columns.{_TEXT_COLUMNS[spec.type][0]}: <source column>; "
                        f"columns present: {shown})")
    # whole columns, read once (base.columns): indexing a datasets column row by row took a minute
    # here
    data = columns(ds, *[c for c in (*cols, "_file", "_row") if c in ds.column_names])
    files = data.get("_file") or [spec.name] * len(ds)
    rows = data.get("_row") or list(range(1, len(ds) + 1))
    values = [data[c] for c in cols]
    for j, (file, row) in enumerate(zip(files, rows)):
        for col in values:
            v = col[j]
            if spec.type == "token_classification" and isinstance(v, list):
                yield " ".join(str(t) for t in v), str(file), int(row)
            elif isinstance(v, list):  # multiple-choice choices: each its own text
                for x in v:
                    yield str(x), str(file), int(row)
            elif v is not None:
                yield str(v), str(file), int(row)


def _key(task: TaskConfig, inputs: list[tuple[TaskConfig, datasets.Dataset]]) -> str:
    """Cache key: the settings, and each input's config, files (size, mtime) and row count."""
    parts = []
    for spec, ds in inputs:
        stats = []
        for f in sorted(set(columns(ds, "_file")["_file"])) if "_file" in ds.column_names else []:
            p = Path(f)
            stats.append([f, p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [f])
        parts.append({"task": spec.model_dump(mode="json", exclude={"weight", "episode",
                                                                    "description"}),
                      "files": stats, "rows": len(ds)})
    key = {"v": SMLMT_VERSION, "source": task.source.model_dump(mode="json"), "inputs": parts}
    return hashlib.sha256(json.dumps(key, sort_keys=True,
                                     allow_nan=False).encode()).hexdigest()[:16]


def load_smlmt(task: TaskConfig, data_dir: str, cache_dir: str | None,
               read: Reader) -> dict[str, datasets.Dataset]:
    """The SMLMT rows as one ``train`` split. ``read`` is :func:`raymeta.tasks.sources.load_raw`
    (passed in, so that this module and ``sources`` do not import each other)."""
    inputs = [(spec, read(spec, data_dir, cache_dir)["train"])
              for spec in _input_tasks(task, data_dir)]
    root = Path(cache_dir) / "smlmt" / task.name / _key(task, inputs) if cache_dir else None
    if root is not None and (root / "dataset_info.json").is_file():
        return {"train": datasets.load_from_disk(str(root))}
    texts = [t for spec, ds in inputs for t in _texts(spec, ds, task.name)]
    ds = datasets.Dataset.from_dict(build_rows(task, texts))
    if root is not None:  # a temp dir, then a rename: a crash never leaves half a cache
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp))
        try:
            os.replace(tmp, root)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
        ds = datasets.load_from_disk(str(root))
    return {"train": ds}


# --------------------------------------------------------------------------- at load and episode
# time


def apply_mask_token(
    raw: dict[str, datasets.Dataset], tok: PreTrainedTokenizerBase, task: TaskConfig
) -> dict[str, datasets.Dataset]:
    """Put the tokenizer's mask token (``source.placeholder`` when it has none) where the rows hold
    :data:`MASK`."""
    mask = tok.mask_token or task.source.placeholder
    # spaces around it: "[MASK]'s" and "x[MASK]" tokenise as the mask token, not glued to a
    # neighbour
    return {s: ds.map(lambda b: {"text": [" ".join(t.replace(MASK, f" {mask} ").split())
                                          for t in b["text"]]},
                      batched=True, desc=f"{task.name}/{s}: mask") for s, ds in raw.items()}


def word_weights(labels: list[str], raw: datasets.Dataset) -> np.ndarray:
    """Per class id: log(1 + the word's sentence count in the corpus), the ``log_frequency``
    sampling weights (the rows per word are capped, so their count would flatten the frequent
    words)."""
    index = {w: i for i, w in enumerate(labels)}
    weights = np.zeros(len(labels))
    col = columns(raw, "label", "_count")
    for word, count in zip(col["label"], col["_count"]):
        weights[index[str(word)]] = np.log1p(count)
    return weights


def check_words(task: TaskConfig, class_ids: np.ndarray, cfg: EpisodeConfig, split: str) -> None:
    """One line naming the task, the count found and the setting to change when fewer than ``ways``
    words have ``shots + queries`` rows (an ordinary task would run with the classes it has; SMLMT
    can give more words)."""
    need = cfg.shots + cfg.queries
    found = len(eligible_classes(class_ids, need))
    ways = cfg.ways if cfg.ways is not None else 2
    if found >= ways:
        return
    src = task.source
    if src.vocab_size < ways:
        fix = f"raise source.vocab_size (now {src.vocab_size}) to at least {ways}"
    elif src.max_sentences_per_word < need:
        fix = (f"raise source.max_sentences_per_word (now {src.max_sentences_per_word}) to at "
               f"least {need}")
    elif src.min_count > need:
        fix = (f"lower source.min_count (now {src.min_count}; an episode needs {need}), add text "
               "to source.from, or lower ways")
    else:
        fix = "add text to source.from, or lower the episode's ways, shots or queries"
    raise DataError(task.name,
                    f"split '{split}': SMLMT found {found} word(s) in at least {need} sentences "
                    f"(shots + queries), a {ways}-way episode needs {ways}: {fix}")
