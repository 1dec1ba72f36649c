"""The meta-batch (``meta.task_batch``) on a local Ray instance: the meta-gradient is the
single-process reference over the tasks drawn for the step, the collective form reaches the
driver form's parameters, the draws are in each step's record, and a resumed run draws the same
tasks and reaches the same parameters bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from raymeta.config import load_config
from raymeta.core.checkpoint import latest_checkpoint
from raymeta.core.combine import normalise_weights
from raymeta.core.task_sampling import sample_tasks
from raymeta.train.trainer import MetaTrainer

from .conftest import driver_killed_at, tiny_config
from .test_trainer import final_tensors, reference_meta_gradient, train_reusing


def records(out: str | Path) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_meta_gradient_is_the_reference_over_the_drawn_tasks(task_actors, mixed_data, tmp_path):
    """Weights 2 : 1 : 0.5, two draws a step: the meta-gradient is Σ (cᵢ / 2) gᵢ over the drawn
    tasks, computed here without Ray; a task not drawn computes nothing."""
    distinct = 0
    for seed in (3, 5):
        data = tiny_config(tmp_path / str(seed), mixed_data, algorithm="fomaml", task_batch=2)
        data["seed"], data["optim"]["max_grad_norm"] = seed, None
        cfg = load_config(data=data)
        drawn = sample_tasks(normalise_weights({t.name: t.weight for t in cfg.tasks}), 2,
                             seed=seed, step=0)
        distinct += len(drawn) == 2
        trainer = MetaTrainer(cfg, actors=task_actors(cfg))
        trainer.setup()
        try:
            shared = {k: v.detach().clone() for k, v in trainer.state.named.items()}
            record = trainer.meta_step()
            assert record.tasks == list(drawn) and set(record.loss) == set(drawn)
            sub = cfg.model_copy(deep=True)
            sub.tasks = [t.model_copy(update={"weight": drawn[t.name]}) for t in cfg.tasks
                         if t.name in drawn]
            ref = reference_meta_gradient(sub, shared, 0, pcgrad=False)
            got = trainer.last_meta_grad
            rel = float((got - ref).norm() / ref.norm())
            assert rel <= 1e-5, f"seed {seed}: relative error {rel:.2e}"
        finally:
            trainer.shutdown()
    assert distinct, "no seed drew two different tasks: the sum over a batch went unchecked"


def test_collective_reaches_the_driver_form_with_a_meta_batch(task_actors, mixed_data, tmp_path):
    """Ranks left out of a step all-reduce a zero gradient and take the same outer step."""
    finals, drawn = {}, {}
    for mode in ("driver", "collective"):
        data = tiny_config(tmp_path / mode, mixed_data, algorithm="fomaml", reduce=mode, steps=4,
                           task_batch=1)
        cfg = load_config(data=data)
        finals[mode] = final_tensors(train_reusing(cfg, task_actors).parent)
        drawn[mode] = [r["tasks"] for r in records(cfg.output_dir)]
        assert all(len(t) == 1 and set(r["loss"]) == set(t)
                   for t, r in zip(drawn[mode], records(cfg.output_dir)))
    assert drawn["driver"] == drawn["collective"]
    assert len({t[0] for t in drawn["driver"]}) > 1  # more than one task over the steps
    for k, v in finals["driver"].items():
        assert torch.allclose(v, finals["collective"][k], rtol=1e-5, atol=1e-6), k


def test_a_resumed_meta_batch_run_draws_the_same_tasks_bit_for_bit(task_actors, mixed_data,
                                                                    tmp_path, monkeypatch):
    steps = {"steps": 4, "algorithm": "fomaml", "task_batch": 2}
    a = load_config(data=tiny_config(tmp_path / "a", mixed_data, **steps))
    straight = final_tensors(train_reusing(a, task_actors).parent)
    cfg = load_config(data=tiny_config(tmp_path / "b", mixed_data, **steps))
    with driver_killed_at(monkeypatch, 2):
        train_reusing(cfg, task_actors)
    assert latest_checkpoint(cfg.output_dir).name == "step-00000002"
    resumed = final_tensors(train_reusing(cfg, task_actors, resume=True).parent)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert [r["tasks"] for r in records(cfg.output_dir)] == \
        [r["tasks"] for r in records(a.output_dir)]
