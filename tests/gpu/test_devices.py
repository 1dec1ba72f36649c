"""The task actor's device code paths. The CPU variant runs everywhere; the CUDA variant carries
the ``gpu`` marker (off by default: ``pytest -m gpu`` on a GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymeta.config import load_config
from raymeta.train.actor import TaskActor

from ..conftest import TINY_BERT

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["fomaml", "maml", "protonet"])
def test_actor_computes_on_device(device, algorithm, tmp_path):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    cfg = load_config(data={
        "model": {"from_config": TINY_BERT}, "cache_dir": str(tmp_path),
        "tasks": [{"use": "bbc_news", "max_length": 32}],
        "meta": {"algorithm": algorithm, "inner_steps": 1, "episode": {"ways": 3, "shots": 2,
                                                                       "queries": 2}},
    })
    actor = TaskActor(cfg.model_dump_json(), "bbc_news", 1, device)
    assert actor.flat.device.type == device
    assert actor.autocast == (device == "cuda" and torch.cuda.is_bf16_supported())
    shared = actor.flat.detach().cpu().numpy().copy()
    out = actor.compute(shared, step=0)
    grad = out["grad"].copy()
    assert out["finite"] and grad.shape == shared.shape and grad.dtype == np.float32
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    again = actor.compute(shared, step=0)["grad"]  # same params, same step: the same gradient
    np.testing.assert_allclose(again, grad, rtol=1e-5 if device == "cpu" else 2e-2,
                               atol=1e-7 if device == "cpu" else 1e-3)
