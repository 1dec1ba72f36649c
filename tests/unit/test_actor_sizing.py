"""How task actors are sized (raymeta.cluster.plan_actors) and when a request is refused
(infeasible) or reported after a wait (placement_error), from a cluster view alone: no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raymeta.cluster import (
    ClusterView,
    NodeType,
    infeasible,
    node_types_of,
    placement_error,
    plan_actors,
    request_of,
)
from raymeta.config import ResourcesConfig

REPO = Path(__file__).resolve().parents[2]
LAPTOP = ClusterView(({"CPU": 2.0, "memory": 8e9},), autoscaler=False)
HEAD_NO_CPU = {"CPU": 0.0, "memory": 3e10}  # cluster.yaml's head advertises CPU: 0
GPU_TYPE = NodeType("worker.gpu", {"CPU": 8, "GPU": 1, "accelerator_type:A10G": 1}, 8)
CPU_TYPE = NodeType("worker.cpu", {"CPU": 4}, 4)


def r(**kw) -> ResourcesConfig:
    return ResourcesConfig(**kw)


def test_laptop_keeps_equal_cpu_shares_and_no_gpu():
    opts, threads, device = plan_actors(r(), 3, LAPTOP)
    assert (opts["num_cpus"], opts["num_gpus"], threads, device) == (0.66, 0.0, 1, "cpu")
    assert plan_actors(r(), 1, LAPTOP)[:2] == ({"num_cpus": 2.0, "num_gpus": 0.0,
                                                "max_restarts": 0}, 2)


def test_fixed_cluster_with_gpus_one_each_when_enough_else_a_fraction():
    view = ClusterView(({"CPU": 16, "GPU": 8},), autoscaler=False)
    opts, _, device = plan_actors(r(), 6, view)
    assert (opts["num_gpus"], opts["num_cpus"], device) == (1.0, 1.0, "cuda")
    opts, _, device = plan_actors(r(), 6, ClusterView(({"CPU": 16, "GPU": 2},), autoscaler=False))
    assert (opts["num_gpus"], device) == (0.33, "cuda")


def test_empty_autoscaling_cluster_asks_for_a_whole_gpu_each_not_a_cpu_crumb():
    """The issue: a head with CPU 0 and GPU workers at 0. Each actor asks for one GPU (and one CPU),
    so the autoscaler adds GPU nodes, instead of 0.01 CPU each, all on the first worker, on CPU."""
    view = ClusterView((HEAD_NO_CPU,), autoscaler=True, node_types=(GPU_TYPE,))
    opts, threads, device = plan_actors(r(), 6, view)
    assert (opts["num_gpus"], opts["num_cpus"], threads, device) == (1.0, 1.0, 1, "cuda")
    assert infeasible(opts, view) is None  # no node has a GPU yet, but the autoscaler can add one


def test_autoscaling_cluster_without_gpu_types_asks_for_a_fixed_cpu_each():
    view = ClusterView((HEAD_NO_CPU, {"CPU": 4}), autoscaler=True, node_types=(CPU_TYPE,))
    opts, _, device = plan_actors(r(), 6, view)
    assert (opts["num_gpus"], opts["num_cpus"], device) == (0.0, 1.0, "cpu")
    assert plan_actors(r(num_cpus_per_actor=2), 6, view)[0]["num_cpus"] == 2


def test_gpus_zero_is_cpu_and_a_number_is_per_actor():
    view = ClusterView(({"CPU": 8, "GPU": 8},), autoscaler=True, node_types=(GPU_TYPE,))
    opts, _, device = plan_actors(r(gpus=0), 6, view)
    assert (opts["num_gpus"], device) == (0.0, "cpu")
    assert plan_actors(r(gpus=0.5), 6, view)[0]["num_gpus"] == 0.5
    assert plan_actors(r(gpus=2), 6, view)[0]["num_gpus"] == 2


def test_num_gpus_per_actor_wins_over_gpus():
    opts, _, device = plan_actors(r(gpus=1, num_gpus_per_actor=0.25), 4, LAPTOP)
    assert (opts["num_gpus"], device) == (0.25, "cuda")
    assert plan_actors(r(gpus=1, num_gpus_per_actor=0), 4, LAPTOP)[2] == "cpu"


def test_unknown_cluster_without_cpus_up_asks_for_one_cpu():
    """No autoscaler seen (a driver that cannot read it), no CPU up: only nodes yet to come can run
    the actors."""
    opts, _, device = plan_actors(r(), 6, ClusterView((HEAD_NO_CPU,), autoscaler=None))
    assert (opts["num_cpus"], opts["num_gpus"], device) == (1.0, 0.0, "cpu")
    assert infeasible(plan_actors(r(gpus=1), 6, ClusterView((HEAD_NO_CPU,), autoscaler=None))[0],
                      # the bounded wait judges it
                      ClusterView((HEAD_NO_CPU,), autoscaler=None)) is None


def test_custom_resources_and_threads():
    opts, threads, _ = plan_actors(r(custom_resources={"nodeB": 1}, num_cpus_per_actor=4,
                                     torch_threads=2), 2, LAPTOP)
    assert opts["resources"] == {"nodeB": 1} and threads == 2
    assert request_of(opts) == {"CPU": 4.0, "nodeB": 1.0}


def test_infeasible_on_a_fixed_cluster_names_the_resource():
    msg = infeasible({"num_cpus": 1, "num_gpus": 1}, LAPTOP)
    assert msg == ("resources: each task actor asks for GPU=1, but no node has that much (largest: "
                   "0); change resources.* or the task's resources")
    assert infeasible({"num_cpus": 1, "num_gpus": 0}, LAPTOP) is None


def test_infeasible_on_an_autoscaling_cluster_only_when_no_node_type_has_it():
    view = ClusterView((HEAD_NO_CPU,), autoscaler=True, node_types=(GPU_TYPE, CPU_TYPE))
    assert infeasible({"num_cpus": 1, "num_gpus": 1}, view) is None
    msg = infeasible({"num_cpus": 1, "resources": {"TPU": 4}}, view, "task 'qa'")
    assert msg.startswith("resources: task 'qa' asks for TPU=4, but no node has that much "
                          "(largest: 0) and no node "
                          "type the autoscaler can add has it (worker.gpu, worker.cpu)")
    capped = ClusterView((HEAD_NO_CPU,), autoscaler=True, node_types=(NodeType("worker.gpu",
                                                                               {"GPU": 1}, 0),))
    assert "no node type" in infeasible({"num_gpus": 1}, capped)  # max_workers 0: it can add none


def test_gpus_auto_only_counts_gpu_node_types_that_also_have_the_custom_resources():
    view = ClusterView((HEAD_NO_CPU,), autoscaler=True,
                       node_types=(GPU_TYPE, NodeType("w", {"CPU": 1, "slot": 1}, 3)))
    opts, _, device = plan_actors(r(custom_resources={"slot": 1}), 2, view)
    assert (opts["num_gpus"], device) == (0.0, "cpu")
    assert plan_actors(r(custom_resources={"accelerator_type:A10G": 0.01}), 2, view)[2] == "cuda"


def test_a_request_spread_over_node_types_is_infeasible_as_a_whole():
    view = ClusterView((HEAD_NO_CPU,), autoscaler=True,
                       node_types=(GPU_TYPE, NodeType("w", {"CPU": 1, "slot": 1}, 3)))
    assert infeasible({"num_cpus": 1, "num_gpus": 1, "resources": {"slot": 1}}, view) == (
        "resources: each task actor asks for CPU=1, GPU=1, slot=1 on one node, but no node has all "
        "of it and no node "
        "type the autoscaler can add has all of it; change resources.* or the task's resources")
    fixed = ClusterView(({"CPU": 4, "GPU": 1}, {"CPU": 4, "slot": 1}), autoscaler=False)
    assert "on one node, but no node has all of it;" in infeasible({"num_gpus": 1,
                                                                    "resources": {"slot": 1}},
                                                                   fixed)


def test_node_types_of_the_shipped_cluster_yaml_once_ray_up_filled_in_the_resources():
    """`ray up` fills each node type's resources from the instance type before it writes the head's
    ~/ray_bootstrap_config.yaml (AWS: g5.2xlarge has 8 vCPUs and one A10G); the head's type is left
    out."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["worker.gpu"]["resources"] = {"CPU": 8, "GPU": 1,
                                                                 "accelerator_type:A10G": 1}
    types = node_types_of(config)
    assert types == (NodeType("worker.gpu", {"CPU": 8.0, "GPU": 1.0, "accelerator_type:A10G": 1.0},
                              8),)
    view = ClusterView((HEAD_NO_CPU,), autoscaler=True, node_types=types)
    opts, _, device = plan_actors(r(), 6, view)
    assert (opts["num_gpus"], opts["num_cpus"], device) == (1.0, 1.0, "cuda")


def test_node_types_of_caps_max_workers_by_the_cluster_max():
    config = {"max_workers": 2, "head_node_type": "h", "available_node_types": {
        "h": {"resources": {"CPU": 0}}, "w": {"resources": {"slot": 1}, "max_workers": 5},
        "v": {"resources": {}}}}
    assert node_types_of(config) == (NodeType("w", {"slot": 1.0}, 2), NodeType("v", {}, 2))


@pytest.mark.parametrize("view, why", [
    (ClusterView((HEAD_NO_CPU,), autoscaler=True, node_types=(GPU_TYPE,)),
     "no node has CPU=1, GPU=1 and the autoscaler added none (node types with it: worker.gpu)"),
    (ClusterView(({"CPU": 8, "GPU": 1},), autoscaler=True, node_types=(GPU_TYPE,)),
     "the nodes that have it are taken (by other actors or jobs) and the autoscaler added none"),
    (ClusterView(({"CPU": 8},), autoscaler=False), "no node has GPU=1;"),
    (ClusterView(({"CPU": 8},), autoscaler=None), "no node has GPU=1 and none joined;"),
])
def test_placement_error_is_one_line_naming_what_is_missing(view, why):
    waiting = {"cls": {"CPU": 1.0, "GPU": 1.0}, "ner#1": {"CPU": 1.0, "GPU": 1.0}}
    msg = placement_error(waiting, view, 600.2)
    assert "\n" not in msg
    assert msg.startswith("resources: task 'cls' actor (and 1 more) still waits after 600 s for a "
                          "node with CPU=1, GPU=1: ")
    assert why in msg and msg.endswith("raise resources.placement_timeout_s")


# -- where the node types come from (raymeta.cluster.autoscaler_node_types), Ray's readers stubbed
# -----------------


@pytest.fixture
def no_gcs_config(monkeypatch):
    import ray._private.state

    monkeypatch.setattr(ray._private.state.state, "get_cluster_config", lambda: None)


def test_node_types_from_the_gcs_cluster_config(monkeypatch):
    import ray._private.state
    from ray.core.generated import autoscaler_pb2

    from raymeta.cluster import discovery

    config = autoscaler_pb2.ClusterConfig()
    for name, res, lo, hi in [("gpu", {"CPU": 8, "GPU": 1}, 0, 4), ("cpu", {"CPU": 4}, 1, 1),
                              ("off", {"CPU": 2}, 0, 0)]:
        g = config.node_group_configs.add(name=name, min_count=lo, max_count=hi)
        g.resources.update(res)
    monkeypatch.setattr(ray._private.state.state, "get_cluster_config", lambda: config)
    assert discovery.autoscaler_node_types() == (True, (NodeType("gpu", {"CPU": 8.0, "GPU": 1.0},
                                                                 4),
                                                        NodeType("cpu", {"CPU": 4.0}, 1)))
    del config.node_group_configs[0]  # min = max everywhere: nothing can be added
    assert discovery.autoscaler_node_types()[0] is False


def test_node_types_from_the_monitor_s_autoscaling_config(monkeypatch, tmp_path, no_gcs_config):
    import ray

    from raymeta.cluster import discovery

    cfg = tmp_path / "bootstrap.yaml"
    cfg.write_text(yaml.safe_dump({"max_workers": 8, "head_node_type": "head",
                                   "available_node_types": {
        "head": {"resources": {"CPU": 0}}, "worker.gpu": {"resources": {"CPU": 8, "GPU": 1},
                                                          "max_workers": 8}}}))
    monitor = ["python", "-u", "/x/ray/autoscaler/_private/monitor.py",
               "--gcs-address=10.0.0.1:6379"]
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: type("Ctx", (), {"gcs_address": "10.0.0.1:6379"})())
    monkeypatch.setattr(discovery, "_monitor_cmdlines",
                        lambda: [monitor + [f"--autoscaling-config={cfg}"]])
    assert discovery.autoscaler_node_types() == (True, (NodeType("worker.gpu", {"CPU": 8.0,
                                                                                "GPU": 1.0}, 8),))
    # `ray start --head` without a config
    monkeypatch.setattr(discovery, "_monitor_cmdlines", lambda: [monitor])
    assert discovery.autoscaler_node_types() == (False, ())
    monkeypatch.setattr(discovery, "_monitor_cmdlines", lambda: [[*monitor[:3],
                                                                  "--gcs-address=10.0.0.9:6379"]])
    assert discovery.autoscaler_node_types() == (None, ())  # another cluster's monitor: cannot tell
