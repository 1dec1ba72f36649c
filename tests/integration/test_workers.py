"""A fixed pool of workers (``resources.workers``) on a local Ray instance: a task sharing a worker
computes the gradient its own actor computes, bit for bit, for every algorithm, and a run reduced
on the workers reaches one actor per task's parameters; the run records who owns which task; with
a meta-batch over 40 tasks on 2 workers the meta-gradient is the single-process reference over the
drawn tasks; and a worker killed mid-run recovers, with its tasks, to the parameters of an
uninterrupted run on the same workers, bit for bit."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from raymeta.config import load_config
from raymeta.core.combine import normalise_weights
from raymeta.core.task_sampling import sample_tasks
from raymeta.train.trainer import MetaTrainer
from raymeta.train.worker import TaskHandle, TaskWorker

from .conftest import algorithm_meta, tiny_config
from .test_trainer import final_tensors, reference_meta_gradient, train_reusing

ALGORITHMS = ["fomaml", "maml", "reptile", "anil", "protonet", "metaopt-svm"]


@pytest.fixture(scope="module")
def worker_pool(ray_local):
    """Two ``TaskWorker`` actors that reserve no CPU (like the suite's task actors), the first
    owning cls and qa, the second ner; ``worker_pool(cfg)`` hands the trainer one handle per task
    (it resets the workers to ``cfg``)."""
    import ray

    remote = ray.remote(TaskWorker).options(num_cpus=0, max_restarts=0)
    workers: list = []

    def handles(cfg):
        if not workers:
            js = cfg.model_dump_json()
            workers.extend([remote.remote(js, [("cls", 0), ("qa", 0)], 1, "cpu"),
                            remote.remote(js, [("ner", 0)], 1, "cpu")])
        return {"cls": TaskHandle(workers[0], "cls"), "qa": TaskHandle(workers[0], "qa"),
                "ner": TaskHandle(workers[1], "ner")}

    yield handles
    for w in workers:
        ray.kill(w)


def step0_gradients(cfg, actors) -> dict[str, np.ndarray]:
    """Each task's gradient at step 0 from ``actors`` (reset to ``cfg``), at the initial
    parameters."""
    import ray

    trainer = MetaTrainer(cfg, actors=actors(cfg))
    trainer.setup()
    try:
        ref = ray.put(trainer.state.flat.numpy())
        keys = list(trainer.actors)
        outs = ray.get([trainer.actors[k].compute.remote(ref, 0) for k in keys])
        return {k: np.array(o["grad"]) for k, o in zip(keys, outs)}
    finally:
        trainer.shutdown()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tasks_sharing_a_worker_compute_what_one_actor_per_task_computes(algorithm, task_actors,
                                                                         worker_pool, mixed_data,
                                                                         tmp_path):
    """Three tasks of three types, two of them in one process around one encoder: each task's
    gradient is the one-task actor's, to the last bit; and after two steps, reduced on the workers,
    the parameters are the one-actor-per-task run's up to float32 rounding of the sum's order."""
    grads, finals = {}, {}
    for name, actors in (("alone", task_actors), ("shared", worker_pool)):
        data = tiny_config(tmp_path / name, mixed_data, steps=2, **algorithm_meta(algorithm))
        grads[name] = step0_gradients(load_config(data=data), actors)
        data = tiny_config(tmp_path / f"{name}-run", mixed_data, steps=2,
                           **algorithm_meta(algorithm))
        finals[name] = final_tensors(train_reusing(load_config(data=data), actors).parent)
    assert grads["alone"].keys() == grads["shared"].keys() == {"cls", "ner", "qa"}
    for k in grads["alone"]:
        assert np.array_equal(grads["alone"][k], grads["shared"][k]), k
    assert finals["alone"].keys() == finals["shared"].keys()
    for k in finals["alone"]:
        assert torch.allclose(finals["alone"][k], finals["shared"][k], rtol=1e-5, atol=1e-6), k


def test_a_run_starts_its_workers_and_records_them(ray_local, task_actors, mixed_data, tmp_path):
    """``resources.workers: 2`` for three tasks: two processes, ``workers.json`` beside
    ``config.yaml`` naming each one's tasks (balanced: the costliest task, qa, alone), and the
    parameters of one actor per task (up to the rounding of a sum grouped by worker)."""
    data = tiny_config(tmp_path / "w", mixed_data, steps=2, algorithm="fomaml")
    data["resources"] = {**data["resources"], "workers": 2, "num_cpus_per_actor": 0.5}
    cfg = load_config(data=data)
    trainer = MetaTrainer(cfg)
    final = trainer.run()
    saved = json.loads((Path(cfg.output_dir) / "workers.json").read_text())
    assert [w["tasks"] for w in saved["workers"]] == [["cls", "ner"], ["qa"]]
    assert all(w["memory_bytes"] > 0 for w in saved["workers"])
    plain = tiny_config(tmp_path / "p", mixed_data, steps=2, algorithm="fomaml")
    alone = final_tensors(train_reusing(load_config(data=plain), task_actors).parent)
    got = final_tensors(final.parent)
    assert all(torch.allclose(alone[k], got[k], rtol=1e-5, atol=1e-6) for k in alone)


def test_a_non_finite_task_stays_out_of_its_workers_sum(worker_pool, mixed_data, tmp_path,
                                                        caplog):
    """``meta.nan_policy: skip_task`` when the sum is taken on the worker: cls (beside qa on its
    worker) non-finite at step 1 leaves that step's mixture to ner and qa, renormalised."""
    data = tiny_config(tmp_path, mixed_data, steps=3, algorithm="fomaml",
                       fault_injection={"task": "cls", "steps": [1]})
    cfg = load_config(data=data)
    with caplog.at_level(logging.WARNING, logger="raymeta"):
        final = train_reusing(cfg, worker_pool)
    recs = [json.loads(x)
            for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in recs] == [[], ["cls"], []]
    assert recs[1]["weights"] == pytest.approx({"ner": 1 / 1.5, "qa": 0.5 / 1.5})
    assert len(recs[1]["grad_bytes"]) == 2  # one gradient per worker, not per task
    assert any("step 1: task 'cls'" in r.getMessage() for r in caplog.records)
    assert all(torch.isfinite(v).all() for v in final_tensors(final.parent).values())


def forty_tasks(tmp_path: Path, data_dir: Path, **meta) -> dict:
    data = tiny_config(tmp_path, data_dir, algorithm="fomaml", **meta)
    cls = data["tasks"][0]
    data["tasks"] = [{**cls, "name": f"cls{i:02d}", "weight": 1.0} for i in range(40)]
    data["resources"] = {**data["resources"], "workers": 2, "num_cpus_per_actor": 0.5,
                         "memory_per_actor": None}
    data["optim"]["max_grad_norm"] = None
    return data


def test_forty_tasks_on_two_workers_give_the_reference_meta_gradient(ray_local, mixed_data,
                                                                      tmp_path):
    """T = 40, W = 2, four tasks a step (stratified by worker, two on each: equal weights): each
    step's meta-gradient is the mean of the drawn tasks' gradients computed here without Ray, and
    the step names them."""
    cfg = load_config(data=forty_tasks(tmp_path, mixed_data, task_batch=4, steps=2))
    trainer = MetaTrainer(cfg)
    trainer.setup()
    try:
        assert trainer.workers.pool.processes == 2
        shares = trainer.workers.pool.shares()
        assert sorted(len(s) for s in shares) == [20, 20]
        for step in range(2):
            drawn = sample_tasks(normalise_weights({t.name: t.weight for t in cfg.tasks}), 4,
                                 seed=cfg.seed, step=step, groups=shares)
            assert [len(set(drawn) & set(s)) for s in shares] == [2, 2]
            shared = {k: v.detach().clone() for k, v in trainer.state.named.items()}
            record = trainer.meta_step()
            assert record.tasks == list(drawn) and len(record.grad_bytes) <= 2  # W, not B

            sub = cfg.model_copy(deep=True)
            sub.tasks = [t.model_copy(update={"weight": drawn[t.name]}) for t in cfg.tasks
                         if t.name in drawn]
            ref = reference_meta_gradient(sub, shared, step, pcgrad=False)
            rel = float((trainer.last_meta_grad - ref).norm() / ref.norm())
            assert rel <= 1e-5, f"step {step}: relative error {rel:.2e}"
    finally:
        trainer.shutdown()


@pytest.mark.slow  # a fault test, as the other killed-actor recoveries (tests/integration/
# test_reliability.py): it runs in CI's slow tier, not in make test's 8 minutes
def test_a_killed_worker_recovers_with_its_tasks(ray_local, mixed_data, tmp_path, monkeypatch,
                                                 caplog):
    """The worker owning cls and ner SIGKILLed after step 1: both tasks are lost together, the
    workers restart from the checkpoint of step 1, and the run ends at the parameters of an
    uninterrupted run on two workers, bit for bit."""
    import ray

    def config(name: str):
        data = tiny_config(tmp_path / name, mixed_data, steps=4, algorithm="fomaml")
        data["resources"] = {**data["resources"], "workers": 2, "num_cpus_per_actor": 0.5}
        return load_config(data=data)

    straight = final_tensors(MetaTrainer(config("straight")).run().parent)
    original, killed = MetaTrainer.meta_step, []

    def step_then_kill(self):
        record = original(self)
        if record.step == 1 and not killed:
            killed.append(ray.get(self.actors["cls"].pid.remote()))
            os.kill(killed[-1], signal.SIGKILL)
        return record

    monkeypatch.setattr(MetaTrainer, "meta_step", step_then_kill)
    with caplog.at_level(logging.WARNING, logger="raymeta"):
        final = MetaTrainer(config("killed")).run()
    assert killed
    died = [r.getMessage() for r in caplog.records if "actor died" in r.getMessage()]
    assert len(died) == 1 and died[0].startswith("task 'cls', 'ner': actor died at step 2"), died
    got = final_tensors(final.parent)
    assert all(torch.equal(straight[k], got[k]) for k in straight)
