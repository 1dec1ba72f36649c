"""The meta-batch (raymeta.core.task_sampling): deterministic per (seed, step), stratified with
equal weights, in proportion to the weights otherwise, an unbiased estimate of the mixture."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from raymeta.core.task_sampling import apportion, assign_tasks, sample_tasks


def equal(n: int) -> dict[str, float]:
    return {f"t{i:03d}": 1.0 / n for i in range(n)}


def test_no_sampling_without_a_batch_or_with_one_as_large_as_the_tasks():
    w = {"a": 0.5, "b": 0.3, "c": 0.2}
    assert sample_tasks(w, None, seed=0, step=5) == w
    assert sample_tasks(w, 3, seed=0, step=5) == w
    assert sample_tasks(w, 10, seed=0, step=5) == w
    with pytest.raises(ValueError):
        sample_tasks(w, 0, seed=0, step=0)


def test_deterministic_per_seed_and_step_and_weights_sum_to_one_in_task_order():
    w = equal(40)
    runs = [[sample_tasks(w, 4, seed=7, step=s) for s in range(30)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert [sample_tasks(w, 4, seed=8, step=s) for s in range(30)] != runs[0]
    for batch in runs[0]:
        assert abs(sum(batch.values()) - 1.0) < 1e-12
        assert list(batch) == sorted(batch)  # task order
    # a resumed step draws what it drew the first time: nothing but (seed, step) matters
    assert sample_tasks(w, 4, seed=7, step=17) == runs[0][17]


@pytest.mark.parametrize("n, b", [(40, 4), (8, 2), (512, 4)])
def test_equal_weights_are_stratified_every_task_once_per_epoch(n, b):
    w = equal(n)
    per_epoch = n // b
    for epoch in range(3):
        seen = Counter()
        for s in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            batch = sample_tasks(w, b, seed=1, step=s)
            assert len(batch) == b and all(v == 1.0 / b for v in batch.values())
            seen.update(batch.keys())
        assert set(seen) == set(w) and set(seen.values()) == {1}, epoch


def test_a_batch_across_two_epochs_counts_a_repeated_task_twice():
    w = equal(5)  # B = 2 does not divide 5: step 2 takes position 4 of epoch 0 and 0 of epoch 1
    for seed in range(50):
        batch = sample_tasks(w, 2, seed=seed, step=2)
        assert abs(sum(batch.values()) - 1.0) < 1e-12
        if len(batch) == 1:
            assert list(batch.values()) == [1.0]
            return
    pytest.fail("no seed drew the same task at both ends of two epochs")


def test_unequal_weights_draw_in_proportion_and_estimate_the_mixture_without_bias():
    w = {"a": 0.6, "b": 0.25, "c": 0.1, "d": 0.05}
    total = Counter()
    steps = 4000
    for s in range(steps):
        batch = sample_tasks(w, 2, seed=3, step=s)
        assert set(batch) <= set(w) and abs(sum(batch.values()) - 1.0) < 1e-12
        for t, v in batch.items():
            total[t] += v
    # E[weight of task i in a batch] = wᵢ: the batch's mean gradient estimates Σ wᵢ gᵢ
    est = np.array([total[t] / steps for t in w])
    assert np.allclose(est, list(w.values()), atol=0.02), est


# -- the draw stratified by worker (resources.workers) -----------------------------------------


def halves(tasks: list[str], w: int = 2) -> list[list[str]]:
    return [tasks[i::w] for i in range(w)]


@pytest.mark.parametrize("n, b, w", [(8, 4, 2), (32, 4, 2), (512, 4, 2), (42, 6, 3)])
def test_by_worker_each_worker_draws_its_share_and_every_task_once_per_epoch(n, b, w):
    """Equal weights and equal shares: b / w tasks on every worker at every step (the step waits
    for the busier one), each drawn with weight 1/b, every task once in every n / b steps."""
    weights, per_epoch = equal(n), n // b
    groups = halves(list(equal(n)), w)
    for epoch in range(2):
        seen = Counter()
        for s in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            batch = sample_tasks(weights, b, seed=2, step=s, groups=groups)
            assert [len(set(batch) & set(g)) for g in groups] == [b // w] * w
            assert list(batch) == sorted(batch) and len(batch) == b
            assert all(abs(v - 1.0 / b) < 1e-12 for v in batch.values())
            seen.update(batch.keys())
        assert set(seen) == set(weights) and set(seen.values()) == {1}, epoch
    assert sample_tasks(weights, b, seed=2, step=3, groups=groups) == \
        sample_tasks(weights, b, seed=2, step=3, groups=groups)  # (seed, step) alone


def test_an_ungrouped_draw_of_four_on_two_workers_is_often_uneven():
    """What the stratified draw fixes: drawn as one batch, 4 of 32 tasks fall 3 + 1 or 4 + 0 on
    two workers in about half the steps."""
    weights, groups = equal(32), halves(list(equal(32)))
    uneven = sum(len(set(sample_tasks(weights, 4, seed=2, step=s)) & set(groups[0])) != 2
                 for s in range(400))
    assert uneven > 120


def test_by_worker_with_unequal_weights_or_shares_stays_unbiased():
    """Weights not equal, and workers of 3 and 1 tasks: each task's expected weight in a batch is
    still wᵢ (W_g · c / b_g), so the batch mean estimates Σ wᵢ gᵢ."""
    w = {"a": 0.4, "b": 0.1, "c": 0.2, "d": 0.3}
    groups = [["a", "b", "c"], ["d"]]
    total, steps = Counter(), 6000
    for s in range(steps):
        batch = sample_tasks(w, 4, seed=5, step=s, groups=groups)
        assert abs(sum(batch.values()) - 1.0) < 1e-12
        assert batch.get("d") == pytest.approx(0.3)  # its worker's one draw: W_g / b_g = 0.3 / 1
        for t, v in batch.items():
            total[t] += v
    est = np.array([total[t] / steps for t in w])
    assert np.allclose(est, list(w.values()), atol=0.01), est
    # equal weights on unequal shares: 3 draws on the worker of three, 1 on the other
    eq = sample_tasks(equal(4), 4 - 1, seed=0, step=0, groups=[["t000", "t001", "t002"],
                                                                 ["t003"]])
    assert "t003" in eq and abs(sum(eq.values()) - 1.0) < 1e-12


def test_apportion_is_proportional_with_at_least_one_each():
    assert apportion(4, [20, 20]) == [2, 2]
    assert apportion(4, [3, 1]) == [3, 1]
    assert apportion(3, [3, 1]) == [2, 1]
    assert apportion(5, [10, 10]) == [3, 2]  # ties to the earlier group
    assert apportion(3, [100, 1, 1]) == [1, 1, 1]
    assert sum(apportion(7, [5, 9, 2])) == 7
    with pytest.raises(ValueError):
        apportion(1, [2, 2])
    # fewer draws than workers: some worker must sit out, so the draw is the ungrouped one
    assert sample_tasks(equal(8), 1, seed=0, step=0, groups=halves(list(equal(8)))) == \
        sample_tasks(equal(8), 1, seed=0, step=0)


# -- which worker owns which task (resources.workers) ------------------------------------------


def test_tasks_are_assigned_longest_first_to_the_least_loaded_worker_in_task_order():
    costs = {"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0, "e": 1.0}
    assert assign_tasks(costs, 2) == [["a", "d", "e"], ["b", "c"]]  # 5 and 4
    assert assign_tasks(costs, 2) == assign_tasks(dict(costs), 2)  # the costs alone decide
    assert assign_tasks(costs, 5) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert assign_tasks(costs, 9) == [["a"], ["b"], ["c"], ["d"], ["e"]]  # no empty worker
    assert assign_tasks(costs, 1) == [list(costs)]


@pytest.mark.parametrize("n, w", [(40, 2), (128, 3), (512, 7)])
def test_equal_tasks_split_evenly_and_every_task_once(n, w):
    shares = assign_tasks({f"t{i:03d}": 1.0 for i in range(n)}, w)
    assert sorted(k for s in shares for k in s) == [f"t{i:03d}" for i in range(n)]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_replicas_of_a_task_never_share_a_worker():
    costs = {"a": 1.0, "a#1": 1.0, "a#2": 1.0, "b": 5.0}
    group = {"a#1": "a", "a#2": "a"}
    shares = assign_tasks(costs, 3, group)
    assert all(sum(group.get(k, k) == "a" for k in s) <= 1 for s in shares)
    with pytest.raises(ValueError, match="task 'a': 3 replicas cannot go to 2 workers"):
        assign_tasks(costs, 2, group)
    with pytest.raises(ValueError, match="at least 1"):
        assign_tasks(costs, 0)
