"""``TaskActor`` as a plain Python object, in this process (no Ray)."""

from __future__ import annotations

import pytest
import torch

from raymeta.config import load_config
from raymeta.train.actor import TaskActor

from ..conftest import TINY_BERT


def actor_for(algorithm: str, cache: str) -> TaskActor:
    cfg = load_config(data={
        "model": {"from_config": TINY_BERT}, "cache_dir": cache,
        "tasks": [{"use": "bbc_news", "max_length": 32}],
        "meta": {"algorithm": algorithm, "inner_steps": 1, "episode": {"ways": 3, "shots": 2,
                                                                       "queries": 2}},
        # decay that would show on a head stepped with a zero gradient
        "optim": {"weight_decay": 0.1},
    })
    return TaskActor(cfg.model_dump_json(), "bbc_news", torch.get_num_threads())


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml", "maml", "anil"])
def test_the_head_optimizer_leaves_an_unused_head_alone(algorithm, feature_cache):
    """Sequence classification in the MAML family adapts an episode head: the task's own head gets
    no gradient, so its AdamW does not step (and its weight decay does not shrink it) at all."""
    actor = actor_for(algorithm, feature_cache)
    before = {k: p.detach().clone() for k, p in actor.head.items()}
    shared = actor.flat.detach().numpy().copy()
    for step in range(2):
        assert actor.compute(shared, step)["finite"]
    assert all(torch.equal(before[k], p) for k, p in actor.head.items())
    assert not actor.head_opt.state  # never stepped


def test_the_multitask_head_does_step(feature_cache):
    """The contrast: multitask trains the task's own head, and the head optimizer moves it."""
    actor = actor_for("multitask", feature_cache)
    before = {k: p.detach().clone() for k, p in actor.head.items()}
    actor.compute(actor.flat.detach().numpy().copy(), 0)
    assert any(not torch.equal(before[k], p) for k, p in actor.head.items())
