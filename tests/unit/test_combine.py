"""Reduction into the meta-gradient: weights, fixed order, shape/finiteness checks, PCGrad, affinity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raymeta.core.combine import NonFiniteGradient, TaskGrad, cosine_matrix, normalise_weights, pcgrad, reduce_gradients
from raymeta.errors import RaymetaError


def tg(name, values, loss=1.0, weight=1.0):
    return TaskGrad(name, np.asarray(values, dtype=np.float32), loss, weight)


def test_weighted_mean_normalises_weights():
    r = reduce_gradients([tg("a", [1, 0], weight=3), tg("b", [0, 1], weight=1)], 2, step=0)
    assert torch.allclose(r.grad, torch.tensor([0.75, 0.25]))
    assert r.used == ["a", "b"] and r.weights == {"a": 0.75, "b": 0.25}


@pytest.mark.parametrize("weights, match", [
    ({"a": 0, "b": 0}, "every task has mixture weight 0"),
    ({"a": -1, "b": 1}, "tasks.a.weight': must be a finite number >= 0"),
    ({"a": math.nan, "b": 1}, "tasks.a.weight'"),
])
def test_bad_mixtures(weights, match):
    with pytest.raises(RaymetaError, match=match):
        normalise_weights(weights)


def test_zero_weight_tasks_are_dropped():
    assert normalise_weights({"a": 1, "b": 0, "c": 3}) == {"a": 0.25, "c": 0.75}


def test_shape_mismatch_names_the_task():
    with pytest.raises(RaymetaError, match=r"task 'bad': gradient of shape \(3,\)"):
        reduce_gradients([tg("good", [1, 2]), tg("bad", [1, 2, 3])], 2, step=0)


def test_nan_skip_task_renormalises_and_reports():
    r = reduce_gradients([tg("a", [1, 1]), tg("b", [np.nan, 0]), tg("c", [3, 3], loss=float("inf"))], 2, step=4)
    assert r.skipped == ["b", "c"] and r.used == ["a"]
    assert torch.equal(r.grad, torch.tensor([1.0, 1.0]))


def test_nan_abort_names_task_and_step():
    with pytest.raises(NonFiniteGradient, match=r"task 'b': non-finite gradient at step 7"):
        reduce_gradients([tg("a", [1, 1]), tg("b", [np.inf, 0])], 2, step=7, nan_policy="abort")


def test_all_non_finite_is_an_error():
    with pytest.raises(NonFiniteGradient, match="every task's gradient is non-finite"):
        reduce_gradients([tg("a", [np.nan, 1])], 2, step=0)


def test_pcgrad_removes_conflicts():
    """Yu et al. 2020: two conflicting gradients each lose their component along the other."""
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    p1, p2 = pcgrad([g1, g2], seed=0)
    assert torch.allclose(p1, torch.tensor([0.5, 0.5]))
    assert torch.allclose(p2, torch.tensor([0.0, 1.0]))
    assert float(p1 @ g2) >= -1e-6 and float(p2 @ g1) >= -1e-6
    same = [torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])]  # no conflict: unchanged
    assert all(torch.equal(a, b) for a, b in zip(pcgrad(same, seed=0), same))


def test_cosine_matrix():
    c = cosine_matrix([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([-3.0, 0.0])])
    assert np.allclose(c, [[1, 0, -1], [0, 1, 0], [-1, 0, 1]])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(-10, 10, width=32), min_size=4, max_size=4), min_size=1, max_size=5),
       st.lists(st.floats(0.1, 10), min_size=5, max_size=5))
def test_reduction_is_deterministic_and_is_the_weighted_sum(grads, weights):
    results = [tg(f"t{i}", g, weight=w) for i, (g, w) in enumerate(zip(grads, weights))]
    a = reduce_gradients(results, 4, step=0, affinity=False)
    b = reduce_gradients(results, 4, step=0, affinity=False)
    assert torch.equal(a.grad, b.grad)
    total = sum(weights[: len(grads)])
    want = sum(np.asarray(g, dtype=np.float64) * w / total for g, w in zip(grads, weights))
    assert np.allclose(a.grad.numpy(), want, atol=1e-4)
