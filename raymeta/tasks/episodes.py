"""Seeded support/query episodes (Vinyals et al. 2016; Snell et al. 2017).

An episode is a pure function of ``(seed, task name, step)``: the same triple gives the same
rows on any machine and in any process, which is what makes the distributed meta-gradient
reproducible and checkable against a single-process reference.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import EpisodeConfig

__all__ = ["Episode", "episode_rng", "sample_episode", "eligible_classes"]


@dataclass
class Episode:
    """One task's batches for one meta-step.

    ``classes[j]`` is the global class id of episode-local label ``j`` (classification only);
    ``support``/``query`` carry local labels, so an N-way head sees labels ``0..N-1``.
    """

    task: str
    step: int
    support: dict[str, torch.Tensor]
    query: dict[str, torch.Tensor]
    support_rows: list[int]
    query_rows: list[int]
    classes: list[int] | None = None
    meta: dict[str, int] = field(default_factory=dict)
    # the classes' tokenised names, row j naming local label j (meta.proto.label_prior); None
    # without a prior
    names: dict[str, torch.Tensor] | None = None


def episode_rng(seed: int, task: str, step: int) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process, which would break reproducibility.
    return np.random.default_rng([seed, zlib.crc32(task.encode("utf-8")), step])


def eligible_classes(class_ids: np.ndarray, need: int) -> np.ndarray:
    """Classes with at least ``need`` rows (an episode samples without replacement)."""
    values, counts = np.unique(class_ids, return_counts=True)
    return values[counts >= need]


def sample_episode(
    n_rows: int, class_ids: np.ndarray | None, cfg: EpisodeConfig, seed: int, task: str, step: int,
    class_weights: np.ndarray | None = None,
) -> tuple[list[int], list[int], list[int] | None]:
    """Row indices of the support and query sets, and the episode's classes (or None).

    Classification: ``ways`` classes (all when None or when the task has fewer), ``shots`` support
    and ``queries`` query rows per class, support ordered by class. Other types: ``support_size``
    and ``query_size`` distinct rows. ``class_weights`` (indexed by class id; None: uniform) makes
    some classes likelier to be drawn (SMLMT's ``sampling: log_frequency``).
    """
    rng = episode_rng(seed, task, step)
    if class_ids is None:
        need = cfg.support_size + cfg.query_size
        if n_rows < need:
            raise ValueError(f"an episode needs {need} rows (support_size + query_size), the split "
                             f"has {n_rows}")
        rows = rng.choice(n_rows, size=need, replace=False)
        return rows[: cfg.support_size].tolist(), rows[cfg.support_size:].tolist(), None
    need = cfg.shots + cfg.queries
    pool = eligible_classes(class_ids, need)
    if len(pool) < 2:
        raise ValueError(f"an episode needs 2 classes with at least {need} rows (shots + queries); "
                         f"{len(pool)} have that many")
    # A task with fewer classes than ``ways`` (SST-2, AG News) runs with all of them, as in LEOPARD.
    ways = len(pool) if cfg.ways is None else min(cfg.ways, len(pool))
    p = None if class_weights is None else class_weights[pool] / class_weights[pool].sum()
    classes = np.sort(rng.choice(pool, size=ways, replace=False, p=p))
    support: list[int] = []
    query: list[int] = []
    for c in classes:
        rows = rng.choice(np.flatnonzero(class_ids == c), size=need, replace=False)
        support += rows[: cfg.shots].tolist()
        query += rows[cfg.shots:].tolist()
    return support, query, [int(c) for c in classes]
