"""Reduction into the meta-gradient: weights, fixed order, shape/finiteness checks, PCGrad,
affinity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raymeta.core.combine import (
    NonFiniteGradient,
    TaskGrad,
    cosine_matrix,
    normalise_weights,
    pcgrad,
    reduce_gradients,
)
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
    r = reduce_gradients([tg("a", [1, 1]), tg("b", [np.nan, 0]), tg("c", [3, 3],
                                                                    loss=float("inf"))], 2, step=4)
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
    c = cosine_matrix([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]),
                       torch.tensor([-3.0, 0.0])])
    assert np.allclose(c, [[1, 0, -1], [0, 1, 0], [-1, 0, 1]])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(-10, 10, width=32), min_size=4, max_size=4), min_size=1,
                max_size=5),
       st.lists(st.floats(0.1, 10), min_size=5, max_size=5))
def test_reduction_is_deterministic_and_is_the_weighted_sum(grads, weights):
    results = [tg(f"t{i}", g, weight=w) for i, (g, w) in enumerate(zip(grads, weights))]
    a = reduce_gradients(results, 4, step=0, affinity=False)
    b = reduce_gradients(results, 4, step=0, affinity=False)
    assert torch.equal(a.grad, b.grad)
    total = sum(weights[: len(grads)])
    want = sum(np.asarray(g, dtype=np.float64) * w / total for g, w in zip(grads, weights))
    assert np.allclose(a.grad.numpy(), want, atol=1e-4)


def test_non_finite_policy_is_one_rule_for_both_reduce_forms(caplog):
    """The driver's reduction and every collective rank apply meta.nan_policy through the same
    function."""
    from raymeta.core.combine import non_finite_policy

    with caplog.at_level("WARNING", logger="raymeta"):
        assert non_finite_policy({"b": "gradient"}, 2, 4, "skip_task") == ["b"]
        assert non_finite_policy({"b": "loss or gradient"}, 2, 4, "skip_task", warn=False) == ["b"]
    assert [r.getMessage() for r in caplog.records] == \
        ["step 4: task 'b' has a non-finite gradient; skipped this step "
         "(meta.nan_policy=skip_task)"]
    with pytest.raises(NonFiniteGradient,
                       match=r"^task 'a': non-finite loss or gradient at step 4 "
                       r"\(meta.nan_policy=abort\)$"):
        non_finite_policy({"a": "loss or gradient", "b": "loss"}, 3, 4, "abort", warn=False)
    with pytest.raises(NonFiniteGradient, match="every task's gradient is non-finite"):
        non_finite_policy({"a": "loss", "b": "loss"}, 2, 4, "skip_task")
    assert non_finite_policy({}, 2, 4, "abort") == []


def test_outer_step_clips_the_flat_gradient_in_place_and_steps():
    from raymeta.config import ExperimentConfig
    from raymeta.core.optim import outer_optimizer, outer_step

    torch.manual_seed(0)
    named = {"a.weight": torch.nn.Parameter(torch.randn(2, 3)),
             "a.bias": torch.nn.Parameter(torch.randn(3))}
    cfg = ExperimentConfig.model_validate({"optim": {"lr": 0.1, "warmup_steps": 0,
                                                     "max_grad_norm": 1.0}})
    opt, sched = outer_optimizer(named, cfg)
    before = {k: p.detach().clone() for k, p in named.items()}
    grad = torch.full((9,), 2.0)
    norm, lr = outer_step(named, grad, opt, sched, cfg.optim.max_grad_norm)
    assert norm == pytest.approx(6.0) and lr == pytest.approx(0.1)
    # left clipped, for checks against a reference
    assert float(grad.norm()) == pytest.approx(1.0, rel=1e-5)
    assert all(p.grad is None for p in named.values()) and sched.get_last_lr()[0] < 0.1
    assert all(not torch.equal(before[k], p) for k, p in named.items())
    with pytest.raises(ValueError, match="does not match the 9 values"):
        outer_step(named, torch.zeros(8), opt, sched, None)


def _running(results, numel, **kw):
    from raymeta.core.combine import RunningReduce

    r = RunningReduce([(t.task, t.weight) for t in results], numel, **kw)
    for t in results:
        r.add(t.grad, t.loss)
    return r.result()


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_running_reduce_is_reduce_gradients_bit_for_bit(n, dtype):
    """meta.overlap under reduce: driver adds each gradient as it arrives: the same meta-gradient,
    bit for bit, and the same cosines to float32 rounding. 300,001 elements: several chunks, and a
    ragged last one."""
    g = torch.Generator().manual_seed(n)
    numel = 300_001
    results = [TaskGrad(f"t{i}", torch.randn(numel, generator=g).to(dtype), 0.5 + i,
                        0.1 + 0.37 * i) for i in range(n)]
    batch = reduce_gradients(results, numel, step=3)
    running = _running(results, numel, step=3)
    assert (torch.equal(batch.grad, running.grad) and batch.used == running.used
            and batch.weights == running.weights)
    if n > 1:
        assert np.allclose(batch.cosine, running.cosine, atol=1e-5)


@pytest.mark.parametrize("rule", ["mean", "pcgrad"])
def test_running_reduce_skips_a_non_finite_task_as_reduce_gradients_does(rule):
    numel = 70_000
    g = torch.Generator().manual_seed(0)
    vals = [torch.randn(numel, generator=g) for _ in range(3)]
    vals[1][123] = float("nan")
    results = [TaskGrad(f"t{i}", v, 1.0, 1.0 + i) for i, v in enumerate(vals)]
    batch = reduce_gradients(results, numel, step=0, rule=rule)
    running = _running(results, numel, step=0, rule=rule)
    assert running.skipped == batch.skipped == ["t1"] and running.used == ["t0", "t2"]
    assert torch.equal(batch.grad, running.grad)
    with pytest.raises(NonFiniteGradient, match="task 't1': non-finite gradient at step 0"):
        _running(results, numel, step=0, nan_policy="abort")


def test_running_reduce_names_a_task_whose_gradient_has_the_wrong_shape():
    from raymeta.core.combine import RunningReduce

    r = RunningReduce([("a", 1.0), ("b", 1.0)], 10, step=0)
    r.add(torch.zeros(10), 1.0)
    with pytest.raises(RaymetaError, match="task 'b': gradient of shape"):
        r.add(torch.zeros(9), 1.0)
    with pytest.raises(ValueError, match="1 of 2 gradients added"):
        r.result()


def test_running_reduce_in_any_grouping_of_arrivals_is_bit_equal():
    """Gradients that arrive together are reduced in one pass, lone ones one by one: the same sum
    either way."""
    from raymeta.core.combine import RunningReduce

    numel = 200_003
    g = torch.Generator().manual_seed(1)
    results = [TaskGrad(f"t{i}", torch.randn(numel, generator=g), 1.0, 1.0 + i) for i in range(5)]
    batch = reduce_gradients(results, numel, step=0)
    for groups in ([5], [1, 1, 1, 1, 1], [2, 3], [1, 3, 1]):
        r, i = RunningReduce([(t.task, t.weight) for t in results], numel, step=0), 0
        for k in groups:
            r.add_many([(t.grad, t.loss) for t in results[i:i + k]])
            i += k
        got = r.result()
        assert torch.equal(got.grad, batch.grad), groups
        assert np.allclose(got.cosine, batch.cosine, atol=1e-5), groups
        if groups == [5]:
            # all at once: reduce_gradients' own pass
            assert np.array_equal(got.cosine, batch.cosine)
