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

**On a pool of workers** (``resources.workers``, ``groups``: each worker's tasks) the draw is
stratified by worker (Cochran 1977, ch. 5): worker g gets ``b_g`` of the ``B`` draws, in proportion
to its number of tasks (largest remainders, at least one each), and draws them among its own tasks
as above (stratified when its tasks' weights are equal, else with replacement in proportion to
them). A task drawn c times gets weight ``W_g · c / b_g``, with ``W_g`` its worker's share of the
mixture: still an unbiased estimate of Σ wᵢ gᵢ, for any allocation. What it buys is the step time:
each worker computes its ``b_g`` tasks, the same number every step, where an ungrouped draw of 4
tasks on 2 workers falls 3 + 1 or 4 + 0 more often than 2 + 2, and the step waits for the busier
worker. Workers are filled by cost (:func:`assign_tasks`), so ``b_g`` in proportion to a worker's
tasks is also in proportion to its cost. With equal weights and equal shares this is the ungrouped
estimator (each draw 1/B) with the draws spread evenly, and every task is still drawn once every
T / B steps when b_g divides the worker's task count. With fewer draws than workers, the draw is
ungrouped (some worker must sit out).

Which worker owns which task (``resources.workers``) is decided here too (:func:`assign_tasks`),
from the tasks' costs alone, so the same config always gives the same assignment.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

__all__ = ["apportion", "assign_tasks", "sample_tasks"]

# separates this stream of random numbers from every other stream seeded by (seed, step)
_STREAM = 0x7A5B


def _permutation(n: int, seed: int, epoch: int, stream: tuple[int, ...] = ()) -> np.ndarray:
    return np.random.default_rng([_STREAM, seed, epoch, 0, *stream]).permutation(n)


def _draw(tasks: Sequence[str], w: np.ndarray, batch: int, seed: int, step: int,
          stream: tuple[int, ...]) -> list[str]:
    """``batch`` draws among ``tasks`` (weights ``w``) at ``step``: stratified over seeded
    permutations when the weights are equal, else with replacement in proportion to them."""
    if np.all(w == w[0]):
        n = len(tasks)
        perms: dict[int, np.ndarray] = {}  # one permutation per epoch the batch spans
        drawn = []
        for pos in range(step * batch, (step + 1) * batch):
            epoch, i = divmod(pos, n)
            if epoch not in perms:
                perms[epoch] = _permutation(n, seed, epoch, stream)
            drawn.append(tasks[perms[epoch][i]])
        return drawn
    rng = np.random.default_rng([_STREAM, seed, step, 1, *stream])
    return [tasks[i] for i in rng.choice(len(tasks), size=batch, replace=True, p=w / w.sum())]


def apportion(batch: int, sizes: Sequence[int]) -> list[int]:
    """``batch`` draws over groups of ``sizes`` tasks, in proportion to their sizes by largest
    remainders (Hamilton's method), at least one each (``batch`` ≥ the number of groups); ties to
    the earlier group."""
    if batch < len(sizes):
        raise ValueError(f"{batch} draws cannot give each of {len(sizes)} groups one")
    total = sum(sizes)
    quota = [batch * n / total for n in sizes]
    alloc = [max(1, int(q)) for q in quota]
    while sum(alloc) > batch:  # the at-least-one rule took a draw from elsewhere
        i = max((j for j in range(len(alloc)) if alloc[j] > 1),
                key=lambda j: (alloc[j] - quota[j], -j))
        alloc[i] -= 1
    while sum(alloc) < batch:
        i = max(range(len(alloc)), key=lambda j: (quota[j] - alloc[j], -j))
        alloc[i] += 1
    return alloc


def sample_tasks(weights: Mapping[str, float], batch: int | None, *, seed: int,
                 step: int, groups: Sequence[Sequence[str]] | None = None) -> dict[str, float]:
    """The tasks of step ``step`` and each one's weight in its meta-gradient (summing to 1), from
    the mixture ``weights`` (task -> wᵢ, summing to 1, in task order). ``batch`` None or at least
    the number of tasks: every task with its own weight. ``groups``: the tasks of each worker, a
    partition of the tasks; the draw is then stratified by worker (module docstring)."""
    tasks = [t for t, w in weights.items() if w > 0]
    if batch is None or batch >= len(tasks):
        return dict(weights)
    if batch < 1:
        raise ValueError(f"a meta-batch needs at least 1 task, got {batch}")
    live = [[t for t in g if weights.get(t, 0) > 0] for g in groups or ()]
    live = [g for g in live if g]
    if len(live) > 1 and batch >= len(live):
        assert sorted(t for g in live for t in g) == sorted(tasks), "groups: not a partition"
        total = float(sum(weights[t] for t in tasks))
        got: dict[str, float] = {}
        for i, (group, b) in enumerate(zip(live, apportion(batch, [len(g) for g in live]))):
            w = np.array([weights[t] for t in group], dtype=np.float64)
            share = float(w.sum()) / total  # W_g: the worker's share of the mixture
            for t in _draw(group, w, b, seed, step, (2, i)):
                got[t] = got.get(t, 0.0) + share / b
        return {t: got[t] for t in tasks if t in got}
    w = np.array([weights[t] for t in tasks], dtype=np.float64)
    counts = Counter(_draw(tasks, w, batch, seed, step, ()))
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
