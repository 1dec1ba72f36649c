"""Task metrics from established implementations, all usable offline:

- classification and multiple choice: accuracy and macro-F1 (scikit-learn);
- NER: entity-level F1 (``seqeval``, CoNLL evaluation semantics);
- extractive QA: exact match and F1 (``torchmetrics``' port of the official SQuAD v1.1 script);
- the 95% confidence interval of a mean (:func:`mean_ci95`, :func:`paired_ci95`): Student's t, the
  one helper behind every "± CI" this package reports (K-shot splits, episodes, validation, Tune,
  benchmark gains).

``evaluate.load("squad")`` would fetch its metric script from the Hugging Face Hub at run
time, which clusters behind a firewall and CI cannot do; these packages ship their code.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["PRIMARY", "classification_metrics", "ner_metrics", "qa_predictions", "qa_metrics",
           "mean_ci95", "paired_ci95"]

#: the metric each task type is ranked by
PRIMARY = {"sequence_classification": "accuracy", "multiple_choice": "accuracy",
           "token_classification": "f1",
           "extractive_qa": "f1"}


def mean_ci95(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std (ddof 1; 0 for one value) and the 95% CI half-width of the mean from
    Student's t with n - 1 degrees of freedom (NaN below two values), n, and the values. t, not the
    normal 1.96: a few K-shot splits or seeds are a small sample (t_0.975 is 2.78 at n = 5), and at
    the hundreds of episodes of an episodic score the two agree to the third digit (1.972 against
    1.960 at n = 200)."""
    a = np.asarray(values, dtype=float)
    if a.ndim != 1 or len(a) == 0:
        raise ValueError(f"mean_ci95: expected a non-empty list of numbers, got shape {a.shape}")
    n = len(a)
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    if n > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    else:
        half = float("nan")
    return {"mean": float(a.mean()), "std": std, "ci95": half, "n": n,
            "values": [float(x) for x in a]}


def paired_ci95(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """:func:`mean_ci95` of the per-item differences ``a - b`` (the same splits or episodes scored
    twice)."""
    if len(a) != len(b):
        raise ValueError(f"paired_ci95: paired scores need equal lengths, got {len(a)} and "
                         f"{len(b)}")
    return mean_ci95([x - y for x, y in zip(a, b)])


def classification_metrics(pred: Sequence[int], gold: Sequence[int]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0))}


def ner_metrics(pred_tags: list[list[str]], gold_tags: list[list[str]]) -> dict[str, float]:
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {"f1": float(f1_score(gold_tags, pred_tags, zero_division=0)),
            "precision": float(precision_score(gold_tags, pred_tags, zero_division=0)),
            "recall": float(recall_score(gold_tags, pred_tags, zero_division=0))}


def qa_predictions(start_logits: np.ndarray, end_logits: np.ndarray, offsets: list[list[Any]],
                   rows: Sequence[int],
                   contexts: dict[int, str], max_answer_tokens: int = 30,
                   n_best: int = 20) -> dict[int, str]:
    """Best span per question over all its windows (the Hugging Face ``run_qa`` post-processing)."""
    best: dict[int, tuple[float, str]] = {}
    for w, row in enumerate(rows):
        s_top = np.argsort(start_logits[w])[::-1][:n_best]
        e_top = np.argsort(end_logits[w])[::-1][:n_best]
        off = offsets[w]
        for s in s_top:
            for e in e_top:
                if off[s][0] < 0 or off[e][0] < 0 or e < s or e - s + 1 > max_answer_tokens:
                    continue  # outside the context, or not a span
                score = float(start_logits[w][s] + end_logits[w][e])
                if row not in best or score > best[row][0]:
                    best[row] = (score, contexts[row][off[s][0]:off[e][1]])
    return {row: text for row, (_, text) in best.items()} | {r: "" for r in rows if r not in best}


def qa_metrics(predictions: dict[int, str], answers: dict[int, list[str]]) -> dict[str, float]:
    from torchmetrics.functional.text import squad

    preds = [{"prediction_text": predictions.get(row, ""), "id": str(row)} for row in answers]
    target = [{"answers": {"text": texts, "answer_start": [0] * len(texts)},
               "id": str(row)} for row, texts in answers.items()]
    out = squad(preds, target)
    return {"exact_match": float(out["exact_match"]) / 100, "f1": float(out["f1"]) / 100}


def to_tags(pred_ids: torch.Tensor, label_ids: torch.Tensor,
            labels: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Word-level tag sequences: positions whose gold label is -100 (continuation pieces, specials)
    are skipped."""
    preds, golds = [], []
    for p, g in zip(pred_ids.tolist(), label_ids.tolist()):
        keep = [(labels[pi], labels[gi]) for pi, gi in zip(p, g) if gi != -100]
        preds.append([a for a, _ in keep])
        golds.append([b for _, b in keep])
    return preds, golds
