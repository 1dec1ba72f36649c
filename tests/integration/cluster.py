"""Real Ray nodes on loopback addresses, for the job-submission and multi-node tests.

Each node is a ``ray start --block`` child process; terminating it stops that node only, so a
test never runs ``ray stop`` (which would take down every Ray instance on the machine)."""

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
    """Every node its own agent ports: the defaults (52365, ...) are taken by any other Ray on the machine."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]


@contextlib.contextmanager
def node(args: list[str], log: Path):
    # Ray 2.60 drains a node for up to 30 s on SIGTERM (for Serve replicas); a test node has nothing to drain.
    node_env = env() | {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *own_ports(), *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=node_env, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # ray start --block stops its node's processes on SIGTERM
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
        wait_for(lambda: port_open("127.0.0.1", dash) or proc.poll() is not None, 60, "the head's dashboard")
        if proc.poll() is not None:
            raise RuntimeError((tmp / f"head-{ip}.log").read_text()[-2000:])
        yield {"address": f"{ip}:{port}", "dashboard": f"http://127.0.0.1:{dash}", "proc": proc}


@contextlib.contextmanager
def worker(tmp: Path, address: str, ip: str, num_cpus: int, resources: dict):
    args = [f"--address={address}", f"--node-ip-address={ip}", f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}"]
    with node(args, tmp / f"worker-{ip}.log") as proc:
        yield proc
