"""cluster.yaml passes the Ray autoscaler's own validation (ray-schema.json) and opens nothing to
the world."""

from __future__ import annotations

from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def strings(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    else:
        yield str(node)


def test_autoscaler_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER.read_text())
    # raises jsonschema.ValidationError on a bad key or type
    validate_config(prepare_config(config))


def test_gpu_workers_scale_from_zero_and_head_runs_no_actors():
    config = yaml.safe_load(CLUSTER.read_text())
    types = config["available_node_types"]
    gpu = types["worker.gpu"]
    assert gpu["min_workers"] == 0 and 0 < gpu["max_workers"] <= config["max_workers"]
    assert gpu["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5"))
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}


def test_no_port_open_to_the_world_and_dashboard_on_loopback():
    config = yaml.safe_load(CLUSTER.read_text())
    text = list(strings(config))
    assert not any("0.0.0.0/0" in s or "::/0" in s for s in text)
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"]
               if "ray start" in c)
