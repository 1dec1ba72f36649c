"""``token_classification``: BIO tagging (NER). Tags align to the first sub-word of each word;
the other sub-words get -100 and are ignored by the loss (Devlin et al. 2019, section 5.3)."""

from __future__ import annotations

from typing import Any

from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase

from ..config import TaskConfig
from .base import Batch, bad_row, columns, map_batched, natural_sort, strip_bookkeeping

__all__ = ["TokenClassification"]


class TokenClassification:
    required = ("tokens", "tags")
    class_column = None

    def infer_labels(self, train, task: TaskConfig) -> list[str]:
        tags = natural_sort({str(t) for seq in columns(train, "tags")["tags"] for t in seq})
        return ["O"] + [t for t in tags if t != "O"] if "O" in tags else tags

    def check_rows(self, ds, task: TaskConfig, labels: list[str] | None) -> None:
        assert labels is not None
        known = set(labels)
        col = columns(ds, "tokens", "tags")
        for i, (toks, tags) in enumerate(zip(col["tokens"], col["tags"])):
            if len(toks) != len(tags):
                raise bad_row(task, ds, i,
                              f"token/tag length mismatch: {len(toks)} tokens, {len(tags)} tags")
            if not toks:
                raise bad_row(task, ds, i, "empty sentence")
            for t in tags:
                if str(t) not in known:
                    raise bad_row(task, ds, i,
                                  f"tag '{t}' is not in the label set ({', '.join(labels)})")

    def tokenize(self, ds, tok: PreTrainedTokenizerBase, task: TaskConfig, labels, split,
                 fingerprint):
        index = {lab: i for i, lab in enumerate(labels)}

        def fn(b: dict[str, list[Any]]) -> dict[str, Any]:
            enc = tok(b["tokens"], is_split_into_words=True, truncation=True,
                      max_length=task.max_length)
            out_labels, lost = [], []
            for i, tags in enumerate(b["tags"]):
                prev, lab = None, []
                for w in enc.word_ids(i):
                    lab.append(-100 if w is None or w == prev else index[str(tags[w])])
                    prev = w
                out_labels.append(lab)
                seen = {w for w in enc.word_ids(i) if w is not None}
                lost.append(len(tags) - len(seen))  # words cut off by max_length
            enc["labels"] = out_labels
            enc["_words_lost"] = lost
            return enc

        feats = map_batched(ds, fn, fingerprint=fingerprint, keep=("_row", "_file"),
                            desc=f"{task.name}/{split}: tokenize")
        truncated = sum(1 for n in columns(feats, "_words_lost")["_words_lost"] if n > 0)
        return feats, {"truncated": truncated, "dropped": 0}

    def collate(self, rows: list[dict[str, Any]], tok: PreTrainedTokenizerBase) -> Batch:
        collator = DataCollatorForTokenClassification(tok, return_tensors="pt")
        return dict(collator(strip_bookkeeping(rows)))
