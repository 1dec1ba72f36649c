"""The meta-batch: which tasks compute a gradient at a step (``meta.task_batch``).

Meta-learning over many tasks samples a batch of them per step instead of visiting every task each
time (Finn et al. 2017, MAML's meta-batch of tasks; learn2learn's ``TaskDataset``; Bansal et al.
2020, SMLMT over thousands of tasks). The draw depends on ``(seed, step)`` alone, so a resumed or
replayed step draws the same tasks, and it is pure: no Ray, no state.

- **Weights not all equal**: ``B`` draws with replacement, each task with probability wᵢ; a task
  drawn c times enters the meta-gradient with weight c / B. The mean over the draws is an unbiased
  estimate of Σ wᵢ gᵢ, the full mixture's meta-gradient, whatever the weights are.
- **Equal weights**: stratified, as an epoch over a shuffled task list: step s takes positions
  ``[s·B, (s+1)·B)`` of a stream of seeded permutations, one per epoch, so that each task is drawn
  once every T / B steps (when B divides T) instead of by chance. A batch that straddles two
  permutations may hold a task twice: it then counts twice, as with replacement.

With ``B`` ≥ T there is no sampling: every task, each with its configured weight, as without a
meta-batch.

Which worker owns which task (``resources.workers``) is decided here too (:func:`assign_tasks`),
from the tasks' costs alone, so the same config always gives the same assignment.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

import numpy as np

__all__ = ["assign_tasks", "sample_tasks"]

# separates this stream of random numbers from every other stream seeded by (seed, step)
_STREAM = 0x7A5B


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([_STREAM, seed, epoch, 0]).permutation(n)


def sample_tasks(weights: Mapping[str, float], batch: int | None, *, seed: int,
                 step: int) -> dict[str, float]:
    """The tasks of step ``step`` and each one's weight in its meta-gradient (summing to 1), from
    the mixture ``weights`` (task -> wᵢ, summing to 1, in task order). ``batch`` None or at least
    the number of tasks: every task with its own weight."""
    tasks = [t for t, w in weights.items() if w > 0]
    if batch is None or batch >= len(tasks):
        return dict(weights)
    if batch < 1:
        raise ValueError(f"a meta-batch needs at least 1 task, got {batch}")
    w = np.array([weights[t] for t in tasks], dtype=np.float64)
    if np.all(w == w[0]):
        n = len(tasks)
        drawn = []
        for pos in range(step * batch, (step + 1) * batch):
            epoch, i = divmod(pos, n)
            drawn.append(tasks[_permutation(n, seed, epoch)[i]])
    else:
        rng = np.random.default_rng([_STREAM, seed, step, 1])
        drawn = [tasks[i] for i in rng.choice(len(tasks), size=batch, replace=True, p=w / w.sum())]
    counts = Counter(drawn)
    # in task order: the reduction sums in a fixed order, whatever order the draws came in
    return {t: counts[t] / batch for t in tasks if t in counts}


def assign_tasks(costs: Mapping[str, float], workers: int,
                 group: Mapping[str, str] | None = None) -> list[list[str]]:
    """Task actor keys -> ``workers`` lists of keys, balanced by cost: longest processing time first
    (Graham 1969), each key onto the worker with the least cost so far, ties to the lower worker
    and the earlier key, so the assignment depends on the costs and their order alone. Keys of one
    ``group`` (the replicas of a task, which each hold the task's head) go to different workers;
    :class:`ValueError` when a group has more keys than there are workers. Each worker's keys keep
    the order of ``costs``, and the workers are in the order of their first keys; no worker is left
    empty when there are at least as many keys."""
    if workers < 1:
        raise ValueError(f"workers: expected at least 1, got {workers}")
    order = list(costs)
    rank = {k: n for n, k in enumerate(order)}
    group = dict(group or {})
    load = [0.0] * workers
    owned: list[list[str]] = [[] for _ in range(workers)]
    held: list[set[str]] = [set() for _ in range(workers)]
    for key in sorted(order, key=lambda k: (-float(costs[k]), rank[k])):
        g = group.get(key, key)
        free = [i for i in range(workers) if g not in held[i]]
        if not free:
            raise ValueError(f"task '{g}': {sum(1 for k in order if group.get(k, k) == g)} "
                             f"replicas cannot go to {workers} workers (one each at most)")
        # an empty worker first, so that no worker is left without a task
        i = min(free, key=lambda j: (bool(owned[j]), load[j], j))
        load[i] += float(costs[key])
        owned[i].append(key)
        held[i].add(g)
    shares = [sorted(keys, key=rank.__getitem__) for keys in owned if keys]
    return sorted(shares, key=lambda keys: rank[keys[0]])  # workers in the order of their tasks
