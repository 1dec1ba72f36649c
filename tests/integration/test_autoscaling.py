"""Task actors on an autoscaling cluster: Ray's own fake one (what
``ray.cluster_utils.AutoscalingCluster`` starts, see cluster.autoscaling_head): a head with 0 CPUs,
as cluster.yaml's, whose autoscaler (Ray's v1 monitor with the ``fake_multinode`` provider) adds
worker nodes, local processes, for requests the nodes up cannot meet.

- the actors ask for what they need (raymeta.cluster.actor_options) and wait for the autoscaler:
  they land on new nodes, one each, instead of being sized to the empty cluster (0.01 CPU each, all
  on one node);
- ``resources.gpus: auto`` asks for one whole GPU per actor when a node type has GPUs, none with
  ``gpus: 0``;
- a request no node type has fails at once; one the autoscaler stops meeting (a node type at its
  max_workers) fails after ``resources.placement_timeout_s``: one line naming what is missing, exit
  2, never a hang.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .cluster import alive_nodes, autoscaling_head, env
from .conftest import tiny_config, write_config

REPO = Path(__file__).resolve().parents[2]
HEAD_IP = "127.0.0.5"
# slot: one per node, so actors asking for slot=1 each need a node of their own; capped: one node at
# most; gpu: advertised, never started here (an actor asking for it would try CUDA, which this
# machine lacks)
WORKER_TYPES = {
    "slot.worker": {"resources": {"CPU": 1, "slot": 1}, "node_config": {}, "min_workers": 0,
                    "max_workers": 3},
    "capped.worker": {"resources": {"CPU": 1, "capped": 1}, "node_config": {}, "min_workers": 0,
                      "max_workers": 1},
    "gpu.worker": {"resources": {"CPU": 8, "GPU": 1}, "node_config": {}, "min_workers": 0,
                   "max_workers": 4},
}


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    with autoscaling_head(tmp_path_factory.mktemp("autoscaling"), WORKER_TYPES, ip=HEAD_IP) as h:
        yield h


def placement(log: str) -> dict[str, str]:
    return dict(re.findall(r"task '(\w+)' \(\w+\): actor pid \d+ on ([\d.]+)", log))


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("raymeta: error:")]


def two_tasks(tmp_path: Path, data_dir: Path, **resources) -> str:
    data = tiny_config(tmp_path, data_dir, steps=2)
    data["tasks"] = data["tasks"][:2]  # cls, ner
    data["resources"] = {**data["resources"], **resources}
    return write_config(tmp_path, data)


def test_actor_options_ask_for_a_whole_gpu_when_the_autoscaler_has_gpu_nodes(fake_cluster):
    """No GPU is up (the head has 0 CPUs and no GPU), but a node type has one: ``gpus: auto`` asks
    for one GPU and one CPU per actor (device cuda), to be met by nodes the autoscaler adds; ``gpus:
    0`` stays on CPU. Sizing only: no actor is started (it would try CUDA)."""
    code = """
import json, sys
from raymeta.config import ResourcesConfig
from raymeta.cluster import actor_options, autoscaler_node_types, connect
connect(sys.argv[1])
autoscaler, types = autoscaler_node_types()
out = {"autoscaler": autoscaler,
       "types": {t.name: [dict(t.resources), t.max_workers] for t in types}}
for name, r in {"auto": ResourcesConfig(), "cpu": ResourcesConfig(gpus=0),
                "half": ResourcesConfig(gpus=0.5)}.items():
    opts, threads, device = actor_options(r, 6)
    out[name] = [opts["num_gpus"], opts["num_cpus"], threads, device]
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code, fake_cluster["address"]], env=env(),
                       capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    # (the driver also prints the autoscaler's events to stdout, "(autoscaler +3s) ...", at any
    # time)
    got = json.loads(next(ln for ln in r.stdout.splitlines()[::-1] if ln.startswith("{")))
    assert got["autoscaler"] is True
    assert got["types"] == {name: [{k: float(v) for k, v in t["resources"].items()},
                                   t["max_workers"]]
                            for name, t in WORKER_TYPES.items()}
    assert got["auto"] == [1.0, 1.0, 1, "cuda"]
    assert got["cpu"] == [0.0, 1.0, 1, "cpu"]  # a fixed CPU each on a cluster that grows, not 0.01
    assert got["half"] == [0.5, 1.0, 1, "cuda"]


def test_request_no_node_type_has_fails_at_once_in_one_line(fake_cluster, cli, mixed_data,
                                                            tmp_path):
    cfg = two_tasks(tmp_path, mixed_data, custom_resources={"TPU": 1}, placement_timeout_s=600)
    t0 = time.monotonic()
    r = cli.run(["train", "--config", cfg, "--address", fake_cluster["address"]], cwd=REPO,
                timeout=180)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("raymeta: error: resources: each task actor asks for TPU=1, but no "
                               "node has that much "
                               "(largest: 0) and no node type the autoscaler can add has it "
                               "(slot.worker, capped.worker, gpu.worker)"), lines[0]
    assert time.monotonic() - t0 < 120  # not the 600 s of placement_timeout_s


@pytest.mark.slow  # the autoscaler starts a node per actor: about a minute here
def test_actors_land_on_new_nodes_one_each(fake_cluster, cli, mixed_data, tmp_path):
    """Each actor asks for slot=1 and a fixed CPU (not a share of the head's 0), and no node up has
    a slot: the autoscaler adds a slot.worker node per actor, and the run trains there (the head
    gets none)."""
    # gpus auto: gpu.worker has no slot: CPU
    cfg = two_tasks(tmp_path, mixed_data, custom_resources={"slot": 1})
    r = cli.run(["train", "--config", cfg, "--address", fake_cluster["address"]], cwd=REPO,
                timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "each of 2 task actors asks for CPU=1, slot=1 (device cpu)" in r.stderr, r.stderr[-3000:]
    placed = placement(r.stderr)
    assert placed.keys() == {"cls", "ner"} and HEAD_IP not in placed.values(), r.stderr[-3000:]
    slots = [n for n in alive_nodes(fake_cluster["address"]) if n["Resources"].get("slot")]
    # one node per actor (each has slot=1, each actor needs it whole); at most max_workers
    assert 2 <= len(slots) <= 3
    assert (Path(tmp_path) / "run" / "final" / "model.safetensors").is_file()


# waits out a placement_timeout_s after the autoscaler's one node: about a minute here
@pytest.mark.slow
def test_actor_the_autoscaler_cannot_place_stops_after_the_timeout_in_one_line(fake_cluster, cli,
                                                                               mixed_data,
                                                                               tmp_path):
    """capped.worker may have one node: the first actor gets it, the second waits; nothing changes
    for placement_timeout_s, and the run stops with one line naming what it waits for."""
    # gpus auto: CPU
    cfg = two_tasks(tmp_path, mixed_data, custom_resources={"capped": 1}, placement_timeout_s=15)
    t0 = time.monotonic()
    r = cli.run(["train", "--config", cfg, "--address", fake_cluster["address"]], cwd=REPO,
                timeout=300)
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-3000:]
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert re.match(r"raymeta: error: resources: task '(cls|ner)' actor still waits after 1[5-9] s "
                    r"for a node with "
                    r"CPU=1, capped=1: ", lines[0]), lines[0]
    assert ("the autoscaler added none" in lines[0]
            and lines[0].endswith("raise resources.placement_timeout_s"))
    assert 15 < took < 200
