"""Real Ray nodes on loopback addresses, for the job-submission, multi-node and autoscaling tests.

Each node is a ``ray start --block`` child process; terminating it stops that node only, so a
test never runs ``ray stop`` (which would take down every Ray instance on the machine; Ray's own
``ray.cluster_utils.AutoscalingCluster`` does, so :func:`autoscaling_head` starts its fake cluster
instead)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["RAY_AUTH_MODE"] = "token"  # token auth is on: joining nodes and clients must say so
    e.pop("RAY_ADDRESS", None)
    return e


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def own_ports() -> list[str]:
    """Every node its own agent ports: the defaults (52365, ...) are taken by any other Ray on the
    machine."""
    return [f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]


@contextlib.contextmanager
def node(args: list[str], log: Path, extra_env: dict[str, str] | None = None):
    # Ray 2.60 drains a node for up to 30 s on SIGTERM (for Serve replicas); a test node has nothing
    # to drain.
    node_env = env() | {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"} | (extra_env or {})
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
                             *own_ports(), *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=node_env,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            # ray start --block stops its node's processes on SIGTERM
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def head(tmp: Path, ip: str = "127.0.0.3", num_cpus: int = 2, resources: dict | None = None):
    port, dash = free_port(), free_port()
    args = ["--head", f"--node-ip-address={ip}", f"--port={port}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}", f"--num-cpus={num_cpus}", "--include-dashboard=true"]
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    with node(args, tmp / f"head-{ip}.log") as proc:
        wait_for(lambda: port_open("127.0.0.1", dash) or proc.poll() is not None, 60,
                 "the head's dashboard")
        if proc.poll() is not None:
            raise RuntimeError((tmp / f"head-{ip}.log").read_text()[-2000:])
        yield {"address": f"{ip}:{port}", "dashboard": f"http://127.0.0.1:{dash}", "proc": proc}


@contextlib.contextmanager
def worker(tmp: Path, address: str, ip: str, num_cpus: int, resources: dict):
    args = [f"--address={address}", f"--node-ip-address={ip}", f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}"]
    with node(args, tmp / f"worker-{ip}.log") as proc:
        yield proc


def kill_node(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """A node lost at once: ``sig`` (SIGKILL: no drain, no goodbye to the GCS) to every process of
    its ``ray start
    --block`` process group (its raylet, object store, agents and the task actors' worker
    processes)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(timeout=30)


def alive_nodes(address: str) -> list[dict]:
    """The alive nodes of the cluster at ``address``, as ``ray.nodes()`` lists them, asked by a
    fresh process (so that the asking process's own Ray connection is not changed)."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(json.dumps([n for n in ray.nodes() if n['Alive']]))")
    r = subprocess.run([sys.executable, "-c", code % address], env=env(), capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def fake_autoscaling_config(head_resources: dict, worker_node_types: dict, gcs_address: str,
                            max_workers: int) -> dict:
    """The cluster config ``ray.cluster_utils.AutoscalingCluster`` writes (Ray's fake_multi_node
    example.yaml, which the wheel does not ship), its worker nodes joining the GCS at
    ``gcs_address``. ``worker_node_types``: name -> {resources, min_workers, max_workers,
    node_config}."""
    return {
        "cluster_name": "fake_multinode", "max_workers": max_workers,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {"ray.head.default": {"resources": head_resources,
                                                      "node_config": {}, "max_workers": 0},
                                 **worker_node_types},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
            "idle_timeout_minutes": 5,
        "docker": {}, "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
            "rsync_filter": [],
    }


@contextlib.contextmanager
def autoscaling_head(tmp: Path, worker_node_types: dict, ip: str = "127.0.0.5",
                     head_resources: dict | None = None,
                     max_workers: int = 8):
    """Ray's fake autoscaling cluster (what ``ray.cluster_utils.AutoscalingCluster`` starts, without
    its ``ray stop
    --force``): a head node (0 CPUs unless ``head_resources`` say otherwise) whose autoscaler, Ray's
    own v1 monitor with the ``fake_multinode`` node provider, starts a worker node of
    ``worker_node_types`` as a set of local processes for each request the nodes up cannot meet. The
    worker nodes are started by the head's monitor, in the head's process group, so they stop with
    it."""
    head_resources = {"CPU": 0} | (head_resources or {})
    port = free_port()
    address = f"{ip}:{port}"
    config = tmp / f"autoscaling-{ip}.json"
    config.write_text(json.dumps(fake_autoscaling_config(head_resources, worker_node_types, address,
                                                         max_workers)))
    custom = {k: v for k, v in head_resources.items() if k not in ("CPU", "GPU")}
    args = ["--head", f"--node-ip-address={ip}", f"--port={port}", f"--autoscaling-config={config}",
            f"--num-cpus={head_resources['CPU']:g}", "--include-dashboard=false"]
    if "GPU" in head_resources:
        args.append(f"--num-gpus={head_resources['GPU']:g}")
    if custom:
        args.append(f"--resources={json.dumps(custom)}")
    # RAY_FAKE_CLUSTER: the fake_multinode provider refuses to start without it; an update every
    # second (Ray's default: 5 s), as AutoscalingCluster sets.
    extra = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    log, proc = tmp / f"head-{ip}.log", None
    try:
        with node(args, log, extra_env=extra) as proc:
            wait_for(lambda: port_open(ip, port) or proc.poll() is not None, 60, "the head's GCS")
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            yield {"address": address, "proc": proc, "config": config, "log": log}
    finally:
        # the worker nodes' raylets outlive their monitor by seconds: the group is gone before the
        # next test
        if proc is not None:
            reap_group(proc.pid)


def reap_group(pgid: int, timeout: float = 20.0) -> None:
    """Wait for every process of process group ``pgid`` to end, then SIGKILL what is left."""
    def gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    with contextlib.suppress(TimeoutError):
        wait_for(gone, timeout, f"process group {pgid} to end")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
