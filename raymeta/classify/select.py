"""Choosing the init and the head by cross-validation on the user's labelled rows (``raymeta fit
--method auto``).

Every candidate (an init and a head) is scored on the same stratified folds
(``StratifiedKFold``, shuffled with the seed): ``min(folds, smallest class)`` of them, so that with
2 to 5 rows in the smallest class each fold holds out one row of it (leave-one-out per class). A
fold's score is the accuracy on its held-out rows; a candidate's is the mean over folds.

The plain encoder with SetFit comes first in the candidates, and the choice is the first candidate
with the highest mean: another candidate is chosen only where it cross-validates strictly better
(the no-harm rule of ``best`` in training, applied to the user's rows).

Runs are Ray tasks: one per (init, fold) for heads that train the encoder (setfit, finetune), one
per init for the heads fitted on its frozen embeddings (prototype, ridge: the rows are embedded
once). The out-of-fold logits of the chosen candidate also calibrate its probabilities: one
temperature minimising their negative log-likelihood (Guo et al. 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .heads import EMBEDDING_HEADS, FitSettings, embedding_head, fit_candidate, load_init

__all__ = ["Candidate", "CandidateScore", "cv_folds", "fit_temperature", "score_candidates"]


@dataclass(frozen=True)
class Candidate:
    init: str  # a model directory (resolved)
    method: str
    name: str  # as the user wrote the init ("plain: <base>" for the base encoder)

    def __str__(self) -> str:
        return f"{self.name} + {self.method}"


@dataclass
class CandidateScore:
    candidate: Candidate
    fold_accuracy: list[float]
    oof_logits: np.ndarray  # (N, C): each row scored by the fold that held it out
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_accuracy))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_accuracy, ddof=1)) if len(self.fold_accuracy) > 1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"init": self.candidate.name, "method": self.candidate.method,
                "cv_accuracy": round(self.mean, 4), "cv_std": round(self.std, 4),
                "folds": [round(a, 4) for a in self.fold_accuracy],
                "seconds": round(self.seconds, 1)}


def cv_folds(class_ids: Sequence[int], *, max_folds: int, seed: int) -> list[tuple[list[int],
                                                                                  list[int]]]:
    """Stratified folds (train rows, held-out rows): min(max_folds, smallest class) of them."""
    from sklearn.model_selection import StratifiedKFold

    ids = np.asarray(class_ids)
    k = int(min(max_folds, np.bincount(ids).min()))
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr.tolist(), te.tolist()) for tr, te in skf.split(np.zeros(len(ids)), ids)]


def fit_temperature(logits: np.ndarray, class_ids: Sequence[int]) -> float:
    """The temperature T minimising the NLL of softmax(logits / T): a log-spaced grid over
    [1e-3, 1e3], then the best point's neighbourhood, deterministic."""
    z = torch.tensor(np.array(logits), dtype=torch.float64)
    y = torch.as_tensor(list(class_ids))

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))

    grid = np.linspace(math.log(1e-3), math.log(1e3), 121)
    best = min(grid, key=nll)
    step = grid[1] - grid[0]
    fine = np.linspace(best - step, best + step, 41)
    return float(math.exp(min(fine, key=nll)))


def _accuracy(logits: np.ndarray, ids: np.ndarray) -> float:
    return float((logits.argmax(-1) == ids).mean())


def embedding_oof(init: str, methods: Sequence[str], texts: Sequence[str], class_ids: Sequence[int],
                  n_classes: int, folds: Sequence[tuple[list[int], list[int]]],
                  settings: FitSettings, pooling: str | None) -> dict[str, np.ndarray]:
    """Out-of-fold logits (N, C) of each frozen-embedding head on ``init``: the rows embedded
    once."""
    from .classifier import embed_texts

    if settings.threads:
        torch.set_num_threads(settings.threads)
    enc, tok, pool = load_init(init, pooling)
    emb = embed_texts(enc, tok, texts, pooling=pool, max_length=settings.max_length,
                      batch_size=settings.batch_size)
    ids = torch.as_tensor(list(class_ids))
    out = {}
    for method in methods:
        oof = np.zeros((len(texts), n_classes), dtype=np.float32)
        for train, held in folds:
            w, b = embedding_head(method, emb[train], ids[train], n_classes, settings.ridge_lam)
            oof[held] = (emb[held] @ w.T + b).numpy()
        out[method] = oof
    return out


def trained_oof(init: str, method: str, texts: Sequence[str], class_ids: Sequence[int],
                labels: Sequence[str], train: list[int], held: list[int], settings: FitSettings,
                seed: int, pooling: str | None) -> np.ndarray:
    """Logits of the held-out rows of one fold, from ``method`` trained on the fold's other rows."""
    clf = fit_candidate(init, method, [texts[i] for i in train], [class_ids[i] for i in train],
                        labels, settings=settings, seed=seed, pooling=pooling)
    return clf.logits([texts[i] for i in held], settings.batch_size).numpy()


EMBED = "embedding heads"  # the one run per init that embeds for every embedding head


def run_options(candidates: Sequence[Candidate], settings: FitSettings, pooling: str | None,
                num_cpus: float) -> dict[tuple[str, str], dict[str, Any]]:
    """(init, method or :data:`EMBED`) -> the ``ray.remote`` options of its cross-validation
    runs: their CPUs and the memory each declares
    (:func:`raymeta.cluster.memory.encoder_run_memory_bytes`, from the init's encoder, loaded here
    once), checked against the cluster before any starts (:func:`raymeta.cluster.task_options`)."""
    from ..cluster import cluster_view, task_options
    from ..cluster.memory import encoder_run_memory_bytes

    memory: dict[tuple[str, str], int] = {}
    for init in dict.fromkeys(c.init for c in candidates):
        encoder = load_init(init, pooling)[0]
        for method in dict.fromkeys(c.method for c in candidates if c.init == init):
            rows, trains = {"finetune": (settings.finetune.batch_size, True),
                            "setfit": (2 * settings.setfit.batch_size, True)}.get(
                                method, (settings.batch_size, False))  # SetFit: pairs
            key = (init, EMBED if method in EMBEDDING_HEADS else method)
            memory[key] = encoder_run_memory_bytes(encoder, rows=rows,
                                                   max_length=settings.max_length, trains=trains)
        del encoder
    return task_options(memory, num_cpus, cluster_view(),
                        lambda k: f"each {k[1]} cross-validation run of --init {k[0]}",
                        fix="give a node more memory, or a smaller --max-length")


def score_candidates(candidates: Sequence[Candidate], texts: Sequence[str],
                     class_ids: Sequence[int], labels: Sequence[str], *, folds: Sequence[tuple[
                         list[int], list[int]]], settings: FitSettings, seed: int,
                     pooling: str | None = None, num_cpus: float = 1.0,
                     progress: bool = True) -> list[CandidateScore]:
    """Every candidate's cross-validation score, its runs as Ray tasks (Ray already connected)."""
    import time

    import ray

    from ..cluster import gather

    n = len(labels)
    ids = np.asarray(class_ids)
    options = run_options(candidates, settings, pooling, num_cpus)
    settings = FitSettings(**{**settings.__dict__, "threads": max(1, int(num_cpus))})
    texts_ref, ids_ref = ray.put(list(texts)), ray.put([int(c) for c in class_ids])
    jobs: list[tuple[Any, list[Candidate], int | None]] = []  # (ref, its candidates, fold)
    by_init: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.method in EMBEDDING_HEADS:
            by_init.setdefault(c.init, []).append(c)
    for init, cands in by_init.items():
        run = ray.remote(**options[init, EMBED])(embedding_oof)
        ref = run.remote(init, [c.method for c in cands], texts_ref, ids_ref, n, list(folds),
                         settings, pooling)
        jobs.append((ref, cands, None))
    for c in candidates:
        if c.method not in EMBEDDING_HEADS:
            fold_run = ray.remote(**options[c.init, c.method])(trained_oof)
            for f, (train, held) in enumerate(folds):
                ref = fold_run.remote(c.init, c.method, texts_ref, ids_ref, list(labels), train,
                                      held, settings, seed, pooling)
                jobs.append((ref, [c], f))
    start = time.perf_counter()
    results = gather([j[0] for j in jobs], progress, desc="cross-validation runs")
    elapsed = time.perf_counter() - start
    oof: dict[Candidate, np.ndarray] = {c: np.zeros((len(texts), n), np.float32)
                                        for c in candidates}
    runs: dict[Candidate, int] = {c: 0 for c in candidates}
    for (_, cands, fold), res in zip(jobs, results):
        for c in cands:
            runs[c] += 1
            if fold is None:
                oof[c] = res[c.method]
            else:
                oof[c][folds[fold][1]] = res
    total_runs = sum(runs.values()) or 1
    out = []
    for c in candidates:
        accs = [_accuracy(oof[c][held], ids[held]) for _, held in folds]
        # wall time shared out by runs: a rough cost, the runs overlap on the cluster
        out.append(CandidateScore(c, accs, oof[c], elapsed * runs[c] / total_runs))
    return out


def choose(scores: Sequence[CandidateScore]) -> CandidateScore:
    """The first candidate with the highest mean CV accuracy (the plain encoder with SetFit comes
    first, so a tie keeps it)."""
    best = scores[0]
    for s in scores[1:]:
        if s.mean > best.mean + 1e-12:
            best = s
    return best
