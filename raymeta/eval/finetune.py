"""Few-shot fine-tuning of one init on one K-shot split, then evaluation on the task's test split.

Pure torch + transformers (no ray): :mod:`raymeta.eval.evaluate` sends many of these out as
parallel Ray tasks. Everything random derives from ``seed``, so every init sees the same
examples in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig, TaskConfig
from ..core.model import MetaModel, load_encoder, load_tokenizer
from ..storage import local_model_path
from ..tasks import Task, load_task
from .metrics import classification_metrics, ner_metrics, qa_metrics, qa_predictions, to_tags

__all__ = ["FinetuneSettings", "finetune_and_evaluate", "test_rows", "run_setup"]


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 30
    lr: float = 5e-5  # encoder
    head_lr: float = 1e-3  # a head that starts from scratch (or from prototypes) needs more
    batch_size: int = 16
    max_test: int | None = 1000
    eval_batch: int = 64


def test_rows(task: Task, max_test: int | None, seed: int) -> list[int]:
    """The evaluated test rows: all, or a seeded subsample of whole questions (QA) / rows."""
    feats = task.features["test"]
    if task.config.type == "extractive_qa":  # sample questions, keep all their windows
        qids = sorted(set(feats["_row"]))
        if max_test is not None and len(qids) > max_test:
            keep = set(np.random.default_rng(seed).choice(qids, max_test, replace=False).tolist())
            return [i for i, r in enumerate(feats["_row"]) if r in keep]
        return list(range(len(feats)))
    n = len(feats)
    if max_test is None or n <= max_test:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, max_test, replace=False).tolist())


def _train(model: MetaModel, task: Task, rows: list[int], s: FinetuneSettings, seed: int) -> None:
    head = model.head(task.name)
    if task.config.type == "sequence_classification":
        # Proto init (Triantafillou et al. 2020): the K-shot head starts as the prototype
        # classifier.
        with torch.no_grad():
            batch = task.batch(rows)
            head.init_from_prototypes(model.embed(batch), batch["labels"], task.num_labels)
    groups = [{"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": s.lr},
              {"params": list(head.parameters()), "lr": s.head_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(s.steps):
        chosen = rows if len(rows) <= s.batch_size else rng.choice(rows, s.batch_size,
                                                                   replace=False).tolist()
        loss, _ = model(task.name, task.batch(chosen))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@torch.no_grad()
def _evaluate(model: MetaModel, task: Task, rows: list[int], eval_batch: int) -> dict[str, float]:
    model.eval()
    t = task.config.type
    logits_all, gold_all, windows = [], [], []
    for start in range(0, len(rows), eval_batch):
        chunk = rows[start:start + eval_batch]
        batch = task.batch(chunk, "test")
        _, logits = model(task.name, {k: v for k, v in batch.items() if k not in ("labels",
                                                                                  "start_positions",
                                                                                  "end_positions")})
        if t == "token_classification":  # pad to a common length so chunks concatenate
            logits_all += list(logits.argmax(-1))
            gold_all += list(batch["labels"])
        elif t == "extractive_qa":
            logits_all.append(logits.float().numpy())
            windows += chunk
        else:
            logits_all.append(logits.argmax(-1))
            gold_all.append(batch["labels"])
    if t == "token_classification":
        assert task.labels is not None
        preds, golds = [], []
        for p, g in zip(logits_all, gold_all):
            a, b = to_tags(p.unsqueeze(0), g.unsqueeze(0), task.labels)
            preds += a
            golds += b
        return ner_metrics(preds, golds)
    if t == "extractive_qa":
        lg = np.concatenate(logits_all)
        feats = task.features["test"].select(windows)
        rows_of = feats["_row"]
        raw = task.raw["test"]
        by_row = {r: i for i, r in enumerate(raw["_row"])}
        contexts = {r: raw[by_row[r]]["context"] for r in set(rows_of)}
        answers = {r: raw[by_row[r]]["answers"]["text"] for r in set(rows_of)}
        preds = qa_predictions(lg[..., 0], lg[..., 1], feats["offset_mapping"], rows_of, contexts)
        return qa_metrics(preds, answers)
    return classification_metrics(torch.cat(logits_all).tolist(), torch.cat(gold_all).tolist())


def run_setup(init: str, task_json: str, *, pooling: str | None, threads: int | None, data_dir: str,
              cache_dir: str | None, task: Task | None) -> tuple[ModelConfig, Task]:
    """What every K-shot evaluation run does first, in its Ray worker: quiet the per-load progress
    bars, size torch's threads, and load the task (unless the caller passes it) with the init's
    tokenizer."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per run is noise
    if threads:
        torch.set_num_threads(threads)
    mcfg = ModelConfig(name_or_path=init, pooling=pooling)
    if task is None:
        tok = load_tokenizer(mcfg, fetch=local_model_path)  # a storage URI: a copy on this node
        task = load_task(TaskConfig.model_validate_json(task_json), tok, data_dir, cache_dir)
    return mcfg, task


def finetune_and_evaluate(
    init: str, task_json: str, train_rows: list[int], *, settings: FinetuneSettings, seed: int,
                          data_dir: str,
    cache_dir: str | None, pooling: str | None = None, threads: int | None = None,
                          task: Task | None = None,
) -> dict[str, Any]:
    """Fine-tune ``init`` (encoder + a new head) on ``train_rows`` and score the test split."""
    mcfg, task = run_setup(init, task_json, pooling=pooling, threads=threads, data_dir=data_dir,
                           cache_dir=cache_dir,
                           task=task)
    torch.manual_seed(seed)
    model = MetaModel(load_encoder(mcfg, fetch=local_model_path), mcfg.pooling)
    model.add_head(task.name, task.config.type, task.num_labels)
    _train(model, task, list(train_rows), settings, seed)
    return _evaluate(model, task, test_rows(task, settings.max_test, seed=0), settings.eval_batch)
