"""``sequence_classification``: single sentences and sentence pairs (``text`` [+ ``text_pair``])."""

from __future__ import annotations

from typing import Any

import datasets
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from ..config import TaskConfig
from .base import Batch, bad_row, columns, map_batched, natural_sort, strip_bookkeeping

__all__ = ["SequenceClassification"]


class SequenceClassification:
    required = ("text", "label")
    class_column = "labels"

    def infer_labels(self, train: datasets.Dataset, task: TaskConfig) -> list[str]:
        return natural_sort({str(v) for v in columns(train, "label")["label"]})

    def check_rows(self, ds: datasets.Dataset, task: TaskConfig, labels: list[str] | None) -> None:
        assert labels is not None
        known = set(labels)
        col = columns(ds, "text", "label")
        for i, (text, lab) in enumerate(zip(col["text"], col["label"])):
            if str(lab) not in known:
                shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
                raise bad_row(task, ds, i, f"label '{lab}' is not in the label set ({shown})")
            if text is None or not str(text).strip():
                raise bad_row(task, ds, i, "empty text")

    def tokenize(self, ds, tok: PreTrainedTokenizerBase, task: TaskConfig, labels, split,
                 fingerprint):
        index = {lab: i for i, lab in enumerate(labels)}
        pair = "text_pair" in ds.column_names

        def fn(b: dict[str, list[Any]]) -> dict[str, Any]:
            enc = tok(b["text"], b["text_pair"] if pair else None, truncation=True,
                      max_length=task.max_length)
            enc["labels"] = [index[str(v)] for v in b["label"]]
            return enc

        feats = map_batched(ds, fn, fingerprint=fingerprint, keep=("_row", "_file"),
                            desc=f"{task.name}/{split}: tokenize")
        truncated = sum(1 for ids in columns(feats,
                                             "input_ids")["input_ids"]
                        if len(ids) >= task.max_length)
        return feats, {"truncated": truncated, "dropped": 0}

    def collate(self, rows: list[dict[str, Any]], tok: PreTrainedTokenizerBase) -> Batch:
        return dict(DataCollatorWithPadding(tok, return_tensors="pt")(strip_bookkeeping(rows)))
