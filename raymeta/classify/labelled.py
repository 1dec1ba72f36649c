"""A user's labelled rows (``raymeta fit --train``) and unlabelled inputs (``raymeta predict
--input``): read with pyarrow, checked before any model loads or Ray starts.

Formats by extension: ``.csv``, ``.tsv``, ``.jsonl`` (one object per line), ``.json`` (a list of
objects, or JSON lines), ``.parquet``, ``.txt`` (one text per line, column ``text``). A directory
reads its ``train.*`` file when it has one (the layout ``raymeta evaluate`` takes), else every file
of one supported format in it, in name order. Every bad input is one :class:`InputError` naming the
argument and the file (and the row, counted from 1 over the data rows, where there is one).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import InputError

__all__ = ["FORMATS", "LabelledData", "input_files", "read_labelled", "read_table", "read_texts"]

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "txt")
MAX_SHOWN = 5  # row numbers shown in an error


def _fmt(path: Path) -> str | None:
    ext = path.suffix.lower().lstrip(".")
    return ext if ext in FORMATS else None


def input_files(path: str, what: str) -> list[str]:
    """The files ``path`` stands for (a file, a directory, or a storage URI of a file), checked to
    exist and to have a supported format."""
    if storage.is_uri(path):
        if _fmt(Path(path.split("?")[0])) is None:
            raise InputError(what, f"unsupported file type (one of {', '.join(FORMATS)})",
                             file=path)
        if not storage.exists(path):
            raise InputError(what, "not found", file=path)
        return [path]
    p = Path(path).expanduser()
    if p.is_dir():
        train = sorted(f for f in p.iterdir() if f.stem == "train" and _fmt(f))
        files = train[:1] or sorted(f for f in p.iterdir() if f.is_file() and _fmt(f))
        if not files:
            raise InputError(what, f"the directory has no {'/'.join(FORMATS)} file", file=str(p))
        kinds = {_fmt(f) for f in files}
        if len(kinds) > 1:
            raise InputError(what, f"the directory mixes file types ({', '.join(sorted(kinds))}); "
                            "give one file", file=str(p))
        return [str(f) for f in files]
    if not p.is_file():
        raise InputError(what, "file not found", file=str(p))
    if _fmt(p) is None:
        raise InputError(what, f"unsupported file type '{p.suffix}' (one of {', '.join(FORMATS)})",
                        file=str(p))
    return [str(p)]


def _check_utf8(data: bytes, what: str, file: str) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(what, f"not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}); "
                        "save the file as UTF-8", file=file) from None


def read_table(file: str, what: str) -> Any:
    """One file as a ``pyarrow.Table`` (local path or storage URI)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    fmt = _fmt(Path(file.split("?")[0]))
    local = str(storage.fetch(file)) if storage.is_uri(file) else file
    try:
        if fmt == "parquet":
            return pq.read_table(local)
        data = Path(local).read_bytes()
        _check_utf8(data, what, file)
        if not data.strip():
            raise InputError(what, "the file is empty", file=file)
        if fmt == "txt":
            lines = data.decode("utf-8").splitlines()
            return pa.table({"text": lines})
        if fmt in ("csv", "tsv"):
            opts = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
            return pacsv.read_csv(local, parse_options=opts)
        if fmt == "json" and data.lstrip().startswith(b"["):
            rows = json.loads(data)
            return pa.Table.from_pylist(rows)
        return pajson.read_json(local)
    except InputError:
        raise
    except Exception as e:  # pyarrow's parser errors: keep its reason, on one line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InputError(what, f"cannot read as {fmt}: {reason}", file=file) from None


def _rows(table: Any, column: str, what: str, file: str) -> list[Any]:
    if column not in table.column_names:
        raise InputError(what, f"no column '{column}' (the file has: "
                        f"{', '.join(table.column_names)})", file=file)
    return table.column(column).to_pylist()


def _shown(rows: list[int]) -> str:
    more = f" and {len(rows) - MAX_SHOWN} more" if len(rows) > MAX_SHOWN else ""
    return ", ".join(str(r) for r in rows[:MAX_SHOWN]) + more


def check_texts(texts: list[Any], what: str, file: str) -> list[str]:
    """The texts as strings; empty, whitespace-only or missing ones are one error saying how many
    and which rows."""
    bad = [i + 1 for i, t in enumerate(texts) if t is None or not str(t).strip()]
    if bad:
        raise InputError(what, f"{len(bad)} empty or whitespace-only texts (rows {_shown(bad)}); "
                        "remove them or give them text", file=file)
    return [str(t) for t in texts]


def _sort_key(label: str) -> tuple[int, Any]:
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def read_texts(path: str, *, text_column: str = "text", what: str) -> tuple[list[str], list[str]]:
    """Unlabelled texts (``raymeta adapt --unlabelled``) and the files they came from: every
    non-empty text of ``text_column`` (blank lines and empty cells are skipped, not errors)."""
    texts: list[str] = []
    files = input_files(path, what)
    for file in files:
        table = read_table(file, what)
        if table.num_rows == 0:
            raise InputError(what, "the file has no rows", file=file)
        texts += [str(t) for t in _rows(table, text_column, what, file)
                  if t is not None and str(t).strip()]
    if not texts:
        raise InputError(what, f"no text in column '{text_column}' (every row is empty)",
                         file=files[0] if len(files) == 1 else path)
    return texts, files


@dataclass(frozen=True)
class LabelledData:
    """Labelled rows: texts, class ids, and the class names in id order."""

    texts: list[str]
    class_ids: list[int]
    labels: list[str]  # display names, in class-id order
    raw_labels: list[str]  # the labels as the file writes them, in the same order
    source: str

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(self.class_ids)
        return {self.labels[i]: c[i] for i in range(len(self.labels))}


def parse_label_names(value: str | None) -> dict[str, str] | None:
    """``--label-names``: a JSON object (label as the file writes it -> name), inline or a file."""
    if value is None:
        return None
    text = value
    if not value.lstrip().startswith("{") and os.path.isfile(value):
        text = Path(value).read_text(encoding="utf-8")
    try:
        names = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError("--label-names", f"not valid JSON ({e.msg})") from None
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise InputError("--label-names", 'a JSON object of label -> name, e.g. '
                        '\'{"0": "negative", "1": "positive"}\'')
    return {str(k): v for k, v in names.items()}


def read_labelled(path: str, *, text_column: str = "text", label_column: str = "label",
                  label_names: dict[str, str] | None = None,
                  what: str = "--train") -> LabelledData:
    """The labelled rows of ``path``, checked: a text and a label on every row, at least 2 classes,
    at least 2 rows per class (cross-validation holds one out), every ``label_names`` key a label
    of the data. ``what``: the argument named in errors."""
    texts: list[Any] = []
    raw: list[Any] = []
    files = input_files(path, what)
    for file in files:
        table = read_table(file, what)
        texts += _rows(table, text_column, what, file)
        raw += _rows(table, label_column, what, file)
    source = files[0] if len(files) == 1 else path
    texts = check_texts(texts, what, source)
    missing = [i + 1 for i, y in enumerate(raw) if y is None or not str(y).strip()]
    if missing:
        raise InputError(what, f"{len(missing)} rows without a label in '{label_column}' (rows "
                        f"{_shown(missing)})", file=source)
    as_str = [str(y) for y in raw]
    classes = sorted(set(as_str), key=_sort_key)
    if len(classes) < 2:
        raise InputError(what, f"the label column '{label_column}' has one class ('{classes[0]}'): "
                        "a classifier needs at least 2", file=source)
    counts = Counter(as_str)
    few = [c for c in classes if counts[c] < 2]
    if few:
        shown = ", ".join(f"'{c}' ({counts[c]})" for c in few[:MAX_SHOWN])
        raise InputError(what, f"every class needs at least 2 rows (cross-validation holds one "
                        f"out); {len(few)} have 1: {shown}", file=source)
    if label_names is not None:
        unknown = sorted(set(label_names) - set(classes), key=_sort_key)
        if unknown:
            raise InputError("--label-names", f"names labels the data lacks: {', '.join(unknown)} "
                            f"(the data's labels: {', '.join(classes[:20])})", file=source)
    ids = {c: i for i, c in enumerate(classes)}
    names = [(label_names or {}).get(c, c) for c in classes]
    return LabelledData(texts, [ids[y] for y in as_str], names, classes, source)
