"""``extractive_qa``: SQuAD-format QA. Long contexts become overlapping windows (``stride``)
and answer character spans map to token start/end positions through the offset mapping
(the Hugging Face ``run_qa`` recipe; Devlin et al. 2019, section 4.2)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..config import TaskConfig
from .base import Batch, bad_row, columns, map_batched, strip_bookkeeping

__all__ = ["ExtractiveQA"]


class ExtractiveQA:
    required = ("question", "context", "answers")
    class_column = None

    def infer_labels(self, train, task: TaskConfig) -> None:
        return None

    def check_rows(self, ds, task: TaskConfig, labels) -> None:
        col = columns(ds, "context", "answers")
        for i, (ctx, ans) in enumerate(zip(col["context"], col["answers"])):
            if not isinstance(ans, dict) or "text" not in ans or "answer_start" not in ans:
                raise bad_row(task, ds, i, "answers must be {text: [...], answer_start: [...]}")
            if not ans["text"]:
                raise bad_row(task, ds, i, "question has no answer (SQuAD v1.1 needs one)")
            for text, start in zip(ans["text"], ans["answer_start"]):
                if ctx[start:start + len(text)] != text:
                    raise bad_row(
                        task, ds, i, f"answer '{text[:40]}' does not match its context at "
                                  f"character {start} "
                        f"(context has '{ctx[start:start + len(text)][:40]}')",
                    )

    def tokenize(self, ds, tok: PreTrainedTokenizerBase, task: TaskConfig, labels, split,
                 fingerprint):
        pad_right = tok.padding_side == "right"
        train = split == "train"

        def fn(b: dict[str, list[Any]]) -> dict[str, Any]:
            enc = tok(
                [q.lstrip() for q in b["question"]], b["context"], truncation="only_second",
                max_length=task.max_length, stride=min(task.stride, task.max_length // 2),
                return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length",
            )
            sample_map = enc.pop("overflow_to_sample_mapping")
            starts, ends, example, offsets = [], [], [], []
            for i, offs in enumerate(enc["offset_mapping"]):
                seq = enc.sequence_ids(i)
                ex = sample_map[i]
                ans = b["answers"][ex]
                s_char = ans["answer_start"][0]
                e_char = s_char + len(ans["text"][0])
                ctx = [k for k, s in enumerate(seq) if s == (1 if pad_right else 0)]
                lo, hi = ctx[0], ctx[-1]
                if offs[lo][0] > s_char or offs[hi][1] < e_char:
                    starts.append(0)  # answer not inside this window: point at [CLS]
                    ends.append(0)
                else:
                    s = lo
                    while s <= hi and offs[s][0] <= s_char:
                        s += 1
                    e = hi
                    while e >= lo and offs[e][1] >= e_char:
                        e -= 1
                    starts.append(s - 1)
                    ends.append(e + 1)
                example.append(b["_row"][ex])
                # keep context offsets only, so evaluation can map logits back to text
                offsets.append([o if seq[k] == (1 if pad_right else 0) else (-1, -1) for k,
                                o in enumerate(offs)])
            enc["offset_mapping"] = offsets
            enc["start_positions"] = starts
            enc["end_positions"] = ends
            enc["_row"] = example
            enc["_file"] = [b["_file"][sample_map[i]] for i in range(len(starts))]
            return enc

        feats = map_batched(ds, fn, fingerprint=fingerprint, keep=(),
                            desc=f"{task.name}/{split}: tokenize")
        windows = len(feats)
        col = columns(feats, "_row", "start_positions")
        no_answer = [i for i, s in enumerate(col["start_positions"]) if s == 0]
        answered = set(r for r, s in zip(col["_row"], col["start_positions"]) if s != 0)
        lost = len(set(columns(ds, "_row")["_row"]) - answered)
        if train and no_answer:  # few-shot episodes learn nothing from windows that lack the answer
            keep = sorted(set(range(windows)) - set(no_answer))
            feats = feats.select(keep)
        return feats, {"windows": windows, "dropped": len(no_answer) if train else 0,
                       "truncated": lost}

    def collate(self, rows: list[dict[str, Any]], tok: PreTrainedTokenizerBase) -> Batch:
        rows = strip_bookkeeping(rows)
        keys = [k for k in rows[0] if k != "offset_mapping"]
        return {k: torch.tensor([r[k] for r in rows]) for k in keys}
