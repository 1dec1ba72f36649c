"""Read a task's raw rows into Arrow (``datasets.Dataset``), one per canonical split.

Every row carries ``_file`` and ``_row`` (1-based) so that a bad row can be named in the
error. Generic formats go through ``datasets``' own builders (csv, json, parquet); the few
formats with no builder (CoNLL, SQuAD JSON, CLINC150, TREC, FewRel) are parsed here into
``Dataset.from_dict``. Built-in corpora live in :mod:`raymeta.tasks.builtin`; SMLMT rows (words
masked in other sources' text) in :mod:`raymeta.tasks.smlmt`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np

from .. import storage
from ..config import SourceConfig, TaskConfig
from ..errors import DataError

__all__ = ["existing_file", "load_raw", "read_label_names", "require_source_column", "resolve_path",
           "rows_where", "SPLITS"]

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
Rows = dict[str, list[Any]]


def _not_read_failures(record: logging.LogRecord) -> bool:
    # datasets' csv/json builders log the parser's error, then raise it: the DataError raised from
    # it in _from_file names it in its one line, so the log line would only print it twice more.
    return not record.getMessage().startswith(("Failed to read file",
                                               "Failed to load JSON from file"))


for _name in ("datasets.packaged_modules.csv.csv", "datasets.packaged_modules.json.json"):
    logging.getLogger(_name).addFilter(_not_read_failures)


def resolve_path(path: str, data_dir: str, base_dir: str | None = None) -> Path | str:
    """A ``source.files`` path: ``${data_dir}`` substituted; a relative path (without
    ``${data_dir}``) starts at ``base_dir``, the folder of the task YAML it was written in (None:
    the current directory). A storage URI (``s3://bucket/tasks/x.csv``, or ``${data_dir}/x.csv``
    with a URI ``data_dir``) stays a URI."""
    written = path.replace("${data_dir}",
                           data_dir.rstrip("/") if storage.is_uri(data_dir) else data_dir)
    if storage.is_uri(written):
        return written
    out = Path(written).expanduser()
    if base_dir is not None and "${data_dir}" not in path and not out.is_absolute():
        out = Path(base_dir) / out
    return out


def existing_file(written: str, src: SourceConfig, data_dir: str, task: str) -> Path:
    """``written`` (a ``source.files`` path) resolved; a missing file is an error naming the path as
    written and as resolved, with the ``data_dir`` hint only when the path goes through
    ``${data_dir}``."""
    path = resolve_path(written, data_dir, src.base_dir)
    # a URI: read through pyarrow.fs into a local cache, on the node that reads it
    if isinstance(path, str):
        try:
            return storage.fetch(path)
        except storage.StorageError as e:
            raise DataError(task, e.reason, file=path) from None
    if path.is_file():
        return path
    msg = "file not found"
    if written != str(path):
        msg += f" (source.files says '{written}'"
        msg += f", with data_dir={data_dir})" if "${data_dir}" in written else \
            f", relative to {src.base_dir or 'the current directory'})"
    if "${data_dir}" in written:
        msg += "; set data_dir= or RAYMETA_DATA_DIR if it lives elsewhere"
    raise DataError(task, msg, file=str(path))


def read_label_names(task: TaskConfig, data_dir: str) -> dict[str, str] | None:
    """``task.label_names`` as a mapping label -> name: as written, or read from the JSON file it
    names (resolved as ``source.files`` are); a list value ([name, description, ...], FewRel's
    pid2name.json) gives its first item. A file that is missing, not JSON, or not such a mapping is
    a one-line :class:`DataError` naming it."""
    names = task.label_names
    if names is None or isinstance(names, dict):
        return names
    path = existing_file(names, task.source, data_dir, task.name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(task.name, f"label_names: not a JSON file ({e})", file=str(path)) from None
    if not isinstance(data, dict):
        raise DataError(task.name, "label_names: expected a JSON object label -> name",
                        file=str(path))
    out: dict[str, str] = {}
    for label, value in data.items():
        name = value[0] if isinstance(value, list) and value else value
        if not isinstance(name, str) or not name.strip():
            raise DataError(task.name, f"label_names: label '{label}' has no name (got {value!r})",
                            file=str(path))
        out[str(label)] = name
    return out


# --------------------------------------------------------------------------- custom formats


def _read_conll(path: Path, task: str, opts: dict[str, Any]) -> Rows:
    """CoNLL: one ``token<sep>tag`` per line (tag in the last column), blank line between
    sentences."""
    sep = opts.get("delimiter", "\t")
    rows: Rows = {"tokens": [], "tags": [], "_row": []}
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    with path.open(encoding=opts.get("encoding", "utf-8")) as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip() or line.startswith("-DOCSTART-"):
                if tokens:
                    rows["tokens"].append(tokens)
                    rows["tags"].append(tags)
                    rows["_row"].append(start)
                tokens, tags, start = [], [], lineno + 1
                continue
            parts = line.split(sep) if sep != " " else line.split()
            if len(parts) < 2:
                raise DataError(
                    task, f"expected 'token{sep!r}tag', got {len(parts)} field(s): token/tag "
                                "length mismatch",
                    file=str(path), row=lineno,
                )
            tokens.append(parts[0])
            tags.append(parts[-1])
    if tokens:
        rows["tokens"].append(tokens)
        rows["tags"].append(tags)
        rows["_row"].append(start)
    return rows


def _read_squad(path: Path, task: str, opts: dict[str, Any]) -> Rows:
    """SQuAD v1.1 JSON -> one row per question; ``_row`` counts questions in file order."""
    data = _load_json(path, task)
    rows: Rows = {"id": [], "title": [], "context": [], "question": [], "answers": [], "_row": []}
    n = 0
    for article in data.get("data", []):
        for para in article.get("paragraphs", []):
            for qa in para.get("qas", []):
                n += 1
                answers = qa.get("answers") or []
                rows["id"].append(str(qa.get("id", n)))
                rows["title"].append(article.get("title", ""))
                rows["context"].append(para.get("context", ""))
                rows["question"].append(qa.get("question", ""))
                rows["answers"].append(
                    {"text": [a["text"] for a in answers],
                     "answer_start": [int(a["answer_start"]) for a in answers]}
                )
                rows["_row"].append(n)
    return rows


def _read_clinc(path: Path, task: str, opts: dict[str, Any]) -> dict[str, Rows]:
    """CLINC150 ``data_full.json``: {split: [[utterance, intent], ...]}; out-of-scope kept apart."""
    data = _load_json(path, task)
    keep_oos = bool(opts.get("include_oos", False))
    out: dict[str, Rows] = {}
    for split, src in (("train", "train"), ("validation", "val"), ("test", "test")):
        pairs = list(data.get(src, []))
        if keep_oos:
            pairs += data.get(f"oos_{src}", [])
        out[split] = {
            "text": [p[0] for p in pairs], "label": [p[1] for p in pairs],
                      "_row": list(range(1, len(pairs) + 1))
        }
    return out


def _read_trec(path: Path, task: str, opts: dict[str, Any]) -> Rows:
    """TREC ``COARSE:fine question``; the original file is latin-1, not UTF-8."""
    fine = opts.get("granularity", "coarse") == "fine"
    rows: Rows = {"text": [], "label": [], "_row": []}
    with path.open(encoding=opts.get("encoding", "latin-1")) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            label, _, question = line.strip().partition(" ")
            if ":" not in label or not question:
                raise DataError(task, "expected 'COARSE:fine question'", file=str(path), row=lineno)
            rows["text"].append(question)
            rows["label"].append(label if fine else label.split(":")[0])
            rows["_row"].append(lineno)
    return rows


def _read_fewrel(path: Path, task: str, opts: dict[str, Any]) -> Rows:
    """FewRel JSON with entity markers: ``@ head @`` and ``# tail #`` (Zhou & Chen 2021's
    punctuation markers, which need no new vocabulary, so the shared encoder's shape is kept)."""
    data = _load_json(path, task)
    rows: Rows = {"text": [], "label": [], "_row": []}
    n = 0
    for rel in sorted(data):
        for inst in data[rel]:
            n += 1
            try:
                toks = list(inst["tokens"])
                h, t = inst["h"][2][0], inst["t"][2][0]
                marks = {h[0]: ["@"], t[0]: ["#"]}
                ends = {h[-1]: ["@"], t[-1]: ["#"]}
            except (KeyError, IndexError, TypeError):
                raise DataError(task, f"relation {rel}: instance lacks tokens/h/t spans",
                                file=str(path), row=n) from None
            out: list[str] = []
            for i, tok in enumerate(toks):
                out += marks.get(i, []) + [tok] + ends.get(i, [])
            rows["text"].append(" ".join(out))
            rows["label"].append(rel)
            rows["_row"].append(n)
    return rows


def _load_json(path: Path, task: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(task, f"not valid JSON: {e.msg}", file=str(path), row=e.lineno) from None


_CUSTOM: dict[str, Callable[..., Any]] = {
    "conll": _read_conll, "squad": _read_squad, "clinc": _read_clinc, "trec": _read_trec,
                                          "fewrel": _read_fewrel,
}
_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}


# --------------------------------------------------------------------------- loading


def _from_file(
    fmt: str, path: Path, task: str, opts: dict[str, Any], cache_dir: str | None, split: str
) -> datasets.Dataset:
    if fmt in _CUSTOM:
        rows = _CUSTOM[fmt](path, task, opts)
        ds = datasets.Dataset.from_dict(rows)
    else:
        kwargs = dict(opts)
        if fmt == "tsv":
            kwargs.setdefault("sep", "\t")
        try:
            ds = datasets.load_dataset(
                _BUILDERS[fmt], data_files=str(path), split="train", cache_dir=cache_dir, **kwargs
            )
        except Exception as e:  # datasets wraps parser errors in several types; keep one line
            if "corresponds to no data" in str(e):
                raise DataError(task, f"split '{split}' is empty: the file has no rows",
                                file=str(path)) from None
            raise _read_error(e, fmt, path, task) from None
        ds = ds.add_column("_row", list(range(1, len(ds) + 1)))
    return ds.add_column("_file", [str(path)] * len(ds))


def _read_error(e: BaseException, fmt: str, path: Path, task: str) -> DataError:
    """One line with the parser's own reason: datasets raises "An error occurred while generating
    the dataset" with pandas' (or pyarrow's) error as its cause."""
    chain = [e]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    for err in chain:
        name = type(err).__name__
        if name == "EmptyDataError":  # pandas: 0 bytes (or only blank lines), not even a header
            return DataError(task, "the file is empty: no header, no rows", file=str(path))
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if m is not None:
            header, line, saw = (int(x) for x in m.groups())
            return DataError(task, f"{saw} fields, the header has {header} (line {line} of the "
                             "file; a separator inside a value needs quotes)", file=str(path),
                             row=line - 1)
    deepest = next((x for x in reversed(chain) if str(x).strip()), e)
    reason = (str(deepest).strip().splitlines()[-1][:200] if str(deepest).strip()
              else type(deepest).__name__)
    return DataError(task, f"cannot read as {fmt}: {reason}", file=str(path))


def _load_files(src: SourceConfig, task: str, data_dir: str,
                cache_dir: str | None) -> dict[str, datasets.Dataset]:
    assert src.format is not None
    out: dict[str, datasets.Dataset] = {}
    if src.format == "clinc":  # one file holds every split
        path = existing_file(_single(src.files, task), src, data_dir, task)
        for split, rows in _read_clinc(path, task, src.read_options).items():
            out[split] = datasets.Dataset.from_dict({**rows,
                                                     "_file": [str(path)] * len(rows["text"])})
        return out
    for split, paths in src.files.items():
        if split not in SPLITS:
            raise DataError(task, f"source.files: unknown split '{split}' "
                            f"(use {', '.join(SPLITS)})")
        parts = [
            _from_file(src.format, existing_file(p, src, data_dir, task), task, src.read_options,
                       cache_dir, split)
            for p in ([paths] if isinstance(paths, str) else paths)
        ]
        out[split] = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return out


def _single(files: dict[str, str | list[str]], task: str) -> str:
    vals = [v for v in files.values()]
    if len(vals) != 1 or not isinstance(vals[0], str):
        raise DataError(task, "this format keeps every split in one file: give exactly one path")
    return vals[0]


def _load_hub(src: SourceConfig, task: str, cache_dir: str | None) -> dict[str, datasets.Dataset]:
    names = src.splits or {"train": "train", "validation": "validation", "test": "test"}
    out = {}
    for split, hub_split in names.items():
        try:
            ds = datasets.load_dataset(
                src.dataset, src.config_name, split=hub_split, revision=src.revision,
                                       cache_dir=cache_dir
            )
        except ValueError as e:
            if "split" in str(e).lower() and not src.splits:
                continue  # default split names: a missing validation/test split is fine
            raise DataError(task, f"hub dataset '{src.dataset}': "
                            f"{str(e).splitlines()[0][:200]}") from None
        except Exception as e:
            raise DataError(task, f"hub dataset '{src.dataset}' cannot be loaded: "
                            f"{str(e).splitlines()[0][:200]}") from None
        ds = ds.add_column("_row", list(range(1, len(ds) + 1)))
        out[split] = ds.add_column("_file", [f"hub:{src.dataset}/{hub_split}"] * len(ds))
    return out


def _stratified_split(labels: list[Any] | None, n: int, fraction: float,
                      seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/test index split; stratified by label when labels are given."""
    rng = np.random.default_rng(seed)
    if labels is None:
        groups = [np.arange(n)]
    else:
        _, inverse = np.unique(np.asarray([str(x) for x in labels]), return_inverse=True)
        groups = [np.flatnonzero(inverse == k) for k in range(int(inverse.max()) + 1)]
    train: list[int] = []
    test: list[int] = []
    for idx in groups:
        idx = rng.permutation(idx)
        k = int(round(len(idx) * fraction))
        k = min(max(k, 1), len(idx) - 1) if len(idx) > 1 else 0
        test += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(test)


def load_raw(task: TaskConfig, data_dir: str,
             cache_dir: str | None = None) -> dict[str, datasets.Dataset]:
    """Raw rows of every available split, with the task's column mapping applied."""
    src = task.source
    if src.kind == "hub":
        splits = _load_hub(src, task.name, cache_dir)
    elif src.kind == "files":
        splits = _load_files(src, task.name, data_dir, cache_dir)
    # reads its inputs through this function: passed in, so the modules import one way
    elif src.kind == "smlmt":
        from .smlmt import load_smlmt

        splits = load_smlmt(task, data_dir, cache_dir, read=load_raw)
    else:
        from .builtin import load_builtin

        splits = load_builtin(src, task.name)
    splits = {k: _rename(v, task) for k, v in splits.items()}
    if "train" not in splits:
        raise DataError(task.name, "the source has no 'train' split")
    if task.where:
        splits = {k: rows_where(v, task, task.where, k) for k, v in splits.items()}
        if len(splits["train"]) == 0:
            raise DataError(task.name, f"split 'train' has no row where {task.where}")
    if src.test_fraction is not None and "test" not in splits:
        label_col = ("label" if task.type == "sequence_classification"
                     and "label" in splits["train"].column_names else None)
        labels = splits["train"][label_col] if label_col else None
        tr, te = _stratified_split(labels, len(splits["train"]), src.test_fraction, src.split_seed)
        splits["train"], splits["test"] = splits["train"].select(tr), splits["train"].select(te)
    if src.max_rows is not None:
        splits = {
            k: v.shuffle(seed=src.split_seed).select(range(min(src.max_rows,
                                                               len(v)))).sort("_row")
                  if len(v) > src.max_rows else v
            for k, v in splits.items()
        }
    return splits


def require_source_column(ds: datasets.Dataset, task: TaskConfig, column: str, key: str,
                          split: str) -> None:
    """A one-line :class:`DataError` naming the task, the file and ``key`` when ``ds`` (a split's
    rows) has no ``column``."""
    if column not in ds.column_names:
        file = ds["_file"][0] if len(ds) and "_file" in ds.column_names else None
        raise DataError(task.name, f"split '{split}' has no column '{column}' ({key}); it has: "
                        + ", ".join(c for c in ds.column_names if not c.startswith("_")),
                        file=file)


def rows_where(ds: datasets.Dataset, task: TaskConfig, where: dict[str, str],
               split: str) -> datasets.Dataset:
    """The rows of ``ds`` whose every column of ``where`` holds its value (as text)."""
    for column in where:
        require_source_column(ds, task, column, "where", split)
    names = list(where)
    return ds.filter(lambda b: [all(str(b[c][i]) == where[c] for c in names)
                                for i in range(len(b[names[0]]))], batched=True)


def _rename(ds: datasets.Dataset, task: TaskConfig) -> datasets.Dataset:
    """Apply ``columns`` (canonical -> source). List values (e.g. MC choices) are packed into one
    column."""
    for canon, col in task.columns.items():
        cols = [col] if isinstance(col, str) else list(col)
        missing = [c for c in cols if c not in ds.column_names]
        if missing:
            file = ds["_file"][0] if len(ds) else None
            raise DataError(
                task.name,
                f"missing column '{missing[0]}' (columns.{canon}); the file has: "
                + ", ".join(c for c in ds.column_names if not c.startswith("_")),
                file=file,
            )
        if isinstance(col, str):
            if col != canon:
                if canon in ds.column_names:
                    ds = ds.remove_columns(canon)
                ds = ds.rename_column(col, canon)
        else:
            ds = ds.map(lambda r, cs=cols, name=canon: {name: [str(r[c]) for c in cs]},
                        desc=f"{task.name}: pack {canon}")
    return ds
