"""``multiple_choice``: a prompt (``question``) and ``choices``; ``label`` is the right choice's
index. Each (prompt, choice) pair is encoded separately and scored by one linear unit
(the SWAG set-up of Devlin et al. 2019, section 4.4)."""

from __future__ import annotations

from typing import Any

from transformers import DataCollatorForMultipleChoice, PreTrainedTokenizerBase

from ..config import TaskConfig
from .base import Batch, bad_row, columns, map_batched, strip_bookkeeping

__all__ = ["MultipleChoice"]


class MultipleChoice:
    required = ("question", "choices", "label")
    class_column = None

    def infer_labels(self, train, task: TaskConfig) -> None:
        return None

    def check_rows(self, ds, task: TaskConfig, labels) -> None:
        width = None
        col = columns(ds, "choices", "label")
        for i, (choices, lab) in enumerate(zip(col["choices"], col["label"])):
            if not isinstance(choices, list) or len(choices) < 2:
                raise bad_row(task, ds, i, "choices must be a list of at least 2 strings")
            width = width or len(choices)
            if len(choices) != width:
                raise bad_row(task, ds, i, f"{len(choices)} choices, but earlier rows have {width}")
            try:
                ok = 0 <= int(lab) < len(choices)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise bad_row(task, ds, i,
                              f"label '{lab}' is not a choice index 0..{len(choices) - 1}")

    def tokenize(self, ds, tok: PreTrainedTokenizerBase, task: TaskConfig, labels, split,
                 fingerprint):
        def fn(b: dict[str, list[Any]]) -> dict[str, Any]:
            firsts = [q for q, ch in zip(b["question"], b["choices"]) for _ in ch]
            seconds = [c for ch in b["choices"] for c in ch]
            enc = tok(firsts, seconds, truncation=True, max_length=task.max_length)
            out: dict[str, Any] = {k: [] for k in enc}
            pos = 0
            for ch in b["choices"]:
                for k in enc:
                    out[k].append(enc[k][pos:pos + len(ch)])
                pos += len(ch)
            out["labels"] = [int(x) for x in b["label"]]
            return out

        feats = map_batched(ds, fn, fingerprint=fingerprint, keep=("_row", "_file"),
                            desc=f"{task.name}/{split}: tokenize")
        truncated = sum(1 for ids in columns(feats,
                                             "input_ids")["input_ids"]
                        if any(len(x) >= task.max_length for x in ids))
        return feats, {"truncated": truncated, "dropped": 0}

    def collate(self, rows: list[dict[str, Any]], tok: PreTrainedTokenizerBase) -> Batch:
        collator = DataCollatorForMultipleChoice(tok, return_tensors="pt")
        return dict(collator(strip_bookkeeping(rows)))
