"""The overlapped all-reduce's pieces without Ray: every algorithm's gradient hook (``on_grad``)
sees exactly the gradients it returns, and :class:`GradientBuckets` forms ``w · g`` bucket by bucket
in a fixed order (a one-rank gloo group: the all-reduce is the identity, the bucketing and weighting
are what is tested; several ranks are tests/integration/test_trainable.py's exactness test, under
reduce: collective)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from raymeta.core.algorithms import ALGORITHMS, task_gradient
from raymeta.core.model import ParamLayout
from raymeta.train.collective import GradientBuckets, free_port

from .test_algorithms import setup, tasks  # noqa: F401  (the module's tiny tasks fixture)


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("name", ["cls", "ner"])
def test_the_gradient_hook_sees_each_returned_gradient_once(alg, name, tasks):  # noqa: F811
    task = tasks[name]
    model, params, ep = setup(task)
    seen: dict[str, torch.Tensor] = {}

    def on_grad(k, g):
        assert k not in seen, f"{k}: twice"
        seen[k] = g.detach().clone()

    kw = dict(inner_steps=2, inner_lr=0.05)
    hooked = task_gradient(alg, model, task.name, task.config.type, ep, params, on_grad=on_grad,
                           **kw)
    model, params, ep = setup(task)
    plain = task_gradient(alg, model, task.name, task.config.type, ep, params, **kw)
    enc = [k for k in plain.grads if k.startswith("encoder.")]
    assert enc and set(enc) <= set(seen)
    # the same gradients with or without the hook, and the hook saw them as returned
    for k in plain.grads:
        assert torch.equal(hooked.grads[k], plain.grads[k]), k
        if k in seen:
            assert torch.equal(seen[k], plain.grads[k]), k
    # removed after
    assert not any(h for p in params.values() for h in getattr(p, "_backward_hooks", None) or {})


@pytest.fixture(scope="module")
def one_rank():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port('127.0.0.1')}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def _layout():
    named = {f"p{i}": torch.zeros(s) for i, s in enumerate([(30, 10), (7,), (100,), (5, 5), (64,)])}
    return ParamLayout.from_named(named)


def test_buckets_cover_the_layout_backwards_in_contiguous_ranges():
    layout = _layout()
    b = GradientBuckets(layout, bucket_bytes=4 * 150, device=torch.device("cpu"))
    # from the last parameter backwards, a bucket closes once it holds >= 150 values
    assert b.ranges == [(307, 496), (0, 307)] and b.sizes == [3, 2]  # p4+p3+p2 = 189; p1+p0 = 307
    assert b.ranges[-1][0] == 0 and all(b.ranges[i][0] == b.ranges[i + 1][1]
                                        for i in range(len(b.ranges) - 1))
    one = GradientBuckets(layout, bucket_bytes=25 * 2**20, device=torch.device("cpu"))
    assert one.ranges == [(0, layout.numel)]


def test_buckets_form_the_weighted_gradient_in_any_arrival_order(one_rank):
    layout = _layout()
    g = torch.Generator().manual_seed(0)
    grads = {n: torch.randn(s, generator=g) for n, s in zip(layout.names, layout.shapes)}
    b = GradientBuckets(layout, bucket_bytes=4 * 40, device=torch.device("cpu"))
    assert len(b.ranges) > 2
    # p3 never arrives
    for order in (list(layout.names), list(reversed(layout.names)), ["p2", "p0", "p4", "p1"]):
        b.begin(0.25)
        b.add("heads.x.weight", torch.ones(3))  # not in the layout: not reduced
        for n in order:
            b.add(n, grads[n])
        if set(order) != set(layout.names):
            assert b.next < len(b.ranges)  # a bucket waits for p3, and every later one for it
        b.finish()
        want = layout.flatten({n: grads[n] if n in order else None for n in layout.names}) * 0.25
        assert torch.equal(b.wait(), want)
    b.begin(0.0)  # weight 0: zeros, even from a non-finite gradient (NaN * 0 is NaN)
    for n in layout.names:
        b.add(n, torch.full(grads[n].shape, float("nan")))
    b.finish()
    assert torch.equal(b.wait(), torch.zeros(layout.numel))
