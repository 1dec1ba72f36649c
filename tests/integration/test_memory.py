"""Memory as a resource on a local Ray instance: the actors declare it, Ray places them by it, and
a run whose actors cannot all fit stops in one line before any of them starts."""

from __future__ import annotations

import pytest

from raymeta.cluster.memory import GB
from raymeta.config import load_config
from raymeta.errors import RaymetaError
from raymeta.train.trainer import MetaTrainer

from .conftest import tiny_config


def node_memory(ray) -> float:
    return min(n["Resources"]["memory"] for n in ray.nodes() if n["Alive"])


def test_actors_declare_their_memory_to_ray(ray_local, mixed_data, tmp_path):
    """Each task actor holds its estimate of the node's ``memory`` resource while it lives."""
    data = tiny_config(tmp_path, mixed_data, steps=1)
    cfg = load_config(data=data)
    trainer = MetaTrainer(cfg)
    trainer.setup()
    try:
        want = trainer.state.actor_memory()
        assert set(want) == {"cls", "ner", "qa"} and all(v > 0.5 * GB for v in want.values())
        free = ray_local.available_resources().get("memory", 0)
        total = ray_local.cluster_resources()["memory"]
        assert total - free >= sum(want.values()) - 1
    finally:
        trainer.shutdown()


def test_a_run_whose_actors_cannot_fit_stops_in_one_line_before_any_starts(ray_local, mixed_data,
                                                                          tmp_path):
    per_actor = 0.6 * node_memory(ray_local) / GB  # each fits the node, two do not
    data = tiny_config(tmp_path, mixed_data, steps=1)
    data["resources"]["memory_per_actor"] = per_actor
    with pytest.raises(RaymetaError) as err:
        MetaTrainer(load_config(data=data)).run()
    line = str(err.value)
    assert "\n" not in line and "the run's 3 task actors need about" in line
    assert "room for 1" in line and "resources.memory_per_actor" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
