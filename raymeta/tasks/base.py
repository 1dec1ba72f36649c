"""What every task type provides: row checks, tokenisation and collation (a ``Protocol``).

One module per type implements it: :mod:`.classification`, :mod:`.token_classification`,
:mod:`.qa` and :mod:`.multiple_choice`.
"""

from __future__ import annotations

from typing import Any, Protocol

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from ..config import TaskConfig
from ..errors import DataError

__all__ = ["TaskProcessor", "Prepared", "require_columns", "natural_sort", "bad_row",
           "strip_bookkeeping", "columns",
           "map_batched"]

Batch = dict[str, torch.Tensor]


class Prepared(dict):
    """Tokenised features of one split plus counters for the log (rows dropped or truncated)."""


class TaskProcessor(Protocol):
    #: canonical columns that must exist after the column mapping
    required: tuple[str, ...]
    #: feature column holding the class id (episodes sample K per class from it), or None
    class_column: str | None

    def infer_labels(self, train: datasets.Dataset, task: TaskConfig) -> list[str] | None:
        """The label set when the config gives none (None: the type has no label set)."""

    def check_rows(self, ds: datasets.Dataset, task: TaskConfig, labels: list[str] | None) -> None:
        """Raise :class:`DataError` naming the file and row of the first bad row."""

    def tokenize(
        self, ds: datasets.Dataset, tok: PreTrainedTokenizerBase, task: TaskConfig,
        labels: list[str] | None, split: str, fingerprint: str,
    ) -> tuple[datasets.Dataset, dict[str, int]]:
        """Features (Arrow) and counters such as ``{"truncated": n, "dropped": m}``. ``fingerprint``
        names the features (see :func:`map_batched`): the caller's key covers everything they are
        made from."""

    def collate(self, rows: list[dict[str, Any]], tok: PreTrainedTokenizerBase) -> Batch:
        """Pad a list of feature rows into a batch of tensors."""


def columns(ds: datasets.Dataset, *names: str) -> dict[str, list[Any]]:
    """Whole columns of ``ds`` as Python lists, in one columnar read. Iterating (or indexing) a
    ``datasets`` column goes through Arrow's formatting row by row: 6 s instead of 0.01 s for
    SST-2's 67k rows."""
    return ds.select_columns(list(names)).to_dict()


def map_batched(ds: datasets.Dataset, fn: Any, *, fingerprint: str, keep: tuple[str, ...],
                desc: str) -> datasets.Dataset:
    """``ds.map(fn, batched=True)``, keeping only the ``keep`` columns of ``ds``, named
    ``fingerprint``.

    Why name it: without ``new_fingerprint``, ``datasets`` dill-hashes ``fn`` twice per call, the
    tokenizer it closes over included, to name the result. That was 85% of the CPU time of loading a
    small task (a 48-row csv: 0.106 s a load, 0.015 s named), and every task actor, trainer and
    evaluation loads its tasks. The caller's fingerprint already covers what the features are made
    from (task config, tokenizer, files, ``FEATURES_VERSION``).
    ``load_from_cache_file=False``: raymeta's own features cache (``task.py``) is then the one cache
    that is read, so a change to the code is never served a ``datasets`` cache file written by the
    old code."""
    return ds.map(fn, batched=True, remove_columns=[c for c in ds.column_names if c not in keep],
                  desc=desc,
                  new_fingerprint=fingerprint, load_from_cache_file=False)


def require_columns(ds: datasets.Dataset, task: TaskConfig, cols: tuple[str, ...],
                    split: str) -> None:
    for c in cols:
        if c not in ds.column_names:
            file = ds["_file"][0] if len(ds) and "_file" in ds.column_names else None
            shown = ", ".join(x for x in ds.column_names if not x.startswith("_"))
            raise DataError(
                task.name, f"split '{split}': missing column '{c}' (map it with columns.{c}: "
                            "<source column>; "
                f"columns present: {shown})", file=file,
            )


def bad_row(task: TaskConfig, ds: datasets.Dataset, i: int, message: str) -> DataError:
    return DataError(task.name, message, file=ds[i]["_file"], row=ds[i]["_row"])


def natural_sort(values: set[str] | list[str]) -> list[str]:
    """Numeric labels sort as numbers ('2' < '10'), others alphabetically."""
    vals = list(set(values))
    if all(v.lstrip("-").isdigit() for v in vals):
        return sorted(vals, key=int)
    return sorted(vals)


def strip_bookkeeping(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feature rows without the ``_row`` / ``_file`` columns kept for error messages: collators pad
    every column."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
