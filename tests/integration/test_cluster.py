"""Scale-out on one machine: a real two-node cluster on two loopback addresses (a head with its
dashboard, and a worker node), started once for the module. `ray job submit` runs the
meta-pretraining job on it, `raymeta train
--address` joins it, and in both the task actors follow the per-task resources of the config; the
result is the same parameters as on one node."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from raymeta.config import load_config
from raymeta.train.trainer import train

from .cluster import env, head, wait_for, worker

REPO = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
# task i on node i: the per-task resources (tasks[].resources) are what places them
PLACED = {"bbc_news": "127.0.0.3", "chatterbot_response": "127.0.0.4"}


def config(out: Path, *, pinned: bool) -> dict:
    tasks = [dict(TINY["tasks"][0], resources={"nodeA": 1}), dict(TINY["tasks"][1],
                                                                  resources={"nodeB": 1})]
    return dict(TINY, tasks=tasks if pinned else TINY["tasks"], meta={**TINY["meta"], "steps": 3},
                resources={"num_cpus_per_actor": 1}, output_dir=str(out))


def write(tmp: Path, cfg: dict) -> Path:
    p = tmp / "job.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def placement(log: str) -> dict[str, str]:
    return dict(re.findall(r"task '(\w+)' \(\w+\): actor pid \d+ on ([\d.]+)", log))


def final(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Head 127.0.0.3 (resource nodeA, the dashboard for job submission) and worker 127.0.0.4
    (nodeB), one CPU each."""
    tmp = tmp_path_factory.mktemp("nodes")
    with head(tmp, ip="127.0.0.3", num_cpus=1, resources={"nodeA": 1}) as h:
        with worker(tmp, h["address"], ip="127.0.0.4", num_cpus=1, resources={"nodeB": 1}):
            # the worker must have joined before a job starts
            wait_for(lambda: "nodeB" in subprocess.run(
                [str(Path(sys.executable).parent / "ray"), "status", f"--address={h['address']}"],
                env=env(), capture_output=True, text=True).stdout, 60, "the second node")
            yield h


@pytest.fixture(scope="module")
def one_node(ray_local, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The same run on this test process's one-node instance, without per-task resources."""
    out = tmp_path_factory.mktemp("one") / "run"
    return final(train(load_config(data=config(out, pinned=False))).parent)


@pytest.mark.slow  # end to end; the slow tier CI runs (docs/testing.md)
def test_ray_job_submit_to_a_real_head_node(two_nodes, one_node, tmp_path):
    e = env() | {"RAY_API_SERVER_ADDRESS": two_nodes["dashboard"]}
    job = write(tmp_path, config(tmp_path / "job-run", pinned=True))
    for _ in range(10):  # the dashboard answers a few seconds before its job agent does
        r = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "submit",
                            "--working-dir", ".",
                            "--", sys.executable, "jobs/meta_pretrain.py", "--config", str(job)],
                           cwd=REPO, env=e, capture_output=True, text=True, timeout=400)
        if "No available agent" not in r.stderr:
            break
        time.sleep(3)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)  # drop the CLI's colours
    assert re.search(r"Job '\S+' succeeded", out), out[-2000:]
    # the cluster's nodes, not a fresh local instance of the job's own
    assert placement(out) == PLACED
    assert (tmp_path / "job-run" / "checkpoints" / "LATEST").is_file()
    got = final(tmp_path / "job-run")
    assert all(torch.equal(got[k], one_node[k]) for k in one_node)


def test_two_nodes_follow_task_resources_and_match_one_node(two_nodes, one_node, cli, tmp_path):
    two = write(tmp_path, config(tmp_path / "two", pinned=True))
    r = cli.run(["train", "--config", str(two), "--address", two_nodes["address"]], cwd=REPO,
                timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert placement(r.stderr) == PLACED
    got = final(tmp_path / "two")
    assert got.keys() == one_node.keys() and all(torch.equal(got[k], one_node[k]) for k in one_node)
