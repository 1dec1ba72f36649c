"""Scale-out on one machine: `ray job submit` to a real head node, and a two-node cluster on two
loopback addresses whose task actors follow the per-task resources in the config."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from .cluster import env, head, wait_for, worker

REPO = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())


def write(tmp: Path, cfg: dict) -> Path:
    p = tmp / "job.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_ray_job_submit_to_a_real_head_node(tmp_path):
    cfg = dict(TINY, output_dir=str(tmp_path / "job-run"), meta={**TINY["meta"], "steps": 2})
    config = write(tmp_path, cfg)
    with head(tmp_path) as h:
        e = env() | {"RAY_API_SERVER_ADDRESS": h["dashboard"]}
        for _ in range(10):  # the dashboard answers a few seconds before its job agent does
            r = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "submit", "--working-dir", ".",
                                "--", sys.executable, "jobs/meta_pretrain.py", "--config", str(config)],
                               cwd=REPO, env=e, capture_output=True, text=True, timeout=400)
            if "No available agent" not in r.stderr:
                break
            time.sleep(3)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        out = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)  # drop the CLI's colours
        assert re.search(r"Job '\S+' succeeded", out), out[-2000:]
        assert "127.0.0.3" in r.stdout  # the actors ran on the head node, not on a fresh local instance
    assert (tmp_path / "job-run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "job-run" / "checkpoints" / "LATEST").is_file()


def run_train(config: Path, address: str | None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "raymeta.cli", "train", "--config", str(config)]
    if address:
        cmd += ["--address", address]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=400)


def test_two_nodes_follow_task_resources_and_match_one_node(tmp_path):
    tasks = [dict(TINY["tasks"][0], resources={"nodeA": 1}), dict(TINY["tasks"][1], resources={"nodeB": 1})]
    base = dict(TINY, meta={**TINY["meta"], "steps": 3}, resources={"num_cpus_per_actor": 1})
    two = write(tmp_path, dict(base, tasks=tasks, output_dir=str(tmp_path / "two")))
    with head(tmp_path, ip="127.0.0.3", num_cpus=1, resources={"nodeA": 1}) as h:
        with worker(tmp_path, h["address"], ip="127.0.0.4", num_cpus=1, resources={"nodeB": 1}):
            wait_for(lambda: "nodeB" in subprocess.run(  # the worker must have joined before the job starts
                [str(Path(sys.executable).parent / "ray"), "status", f"--address={h['address']}"],
                env=env(), capture_output=True, text=True).stdout, 60, "the second node")
            r = run_train(two, h["address"])
    assert r.returncode == 0, r.stderr[-3000:]
    placed = dict(re.findall(r"task '(\w+)' \(\w+\): actor pid \d+ on ([\d.]+)", r.stderr))
    assert placed == {"bbc_news": "127.0.0.3", "chatterbot_response": "127.0.0.4"}
    (tmp_path / "one").mkdir()
    r1 = run_train(write(tmp_path / "one", dict(base, output_dir=str(tmp_path / "one"))), None)  # one local node
    assert r1.returncode == 0, r1.stderr[-3000:]
    a = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
