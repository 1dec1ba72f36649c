"""Connecting to Ray and sizing task actors. The one place that decides addresses and resources."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from .config import ResourcesConfig
from .errors import RaymetaError

__all__ = ["connect", "actor_options", "bundle_options", "get", "kill", "LOCAL_NODE_IP"]

log = logging.getLogger(__name__)

# Ray turns 127.0.0.1 into the machine's interface address; any other loopback address is
# kept as given, so the embedded default really stays on loopback (see SECURITY.md).
LOCAL_NODE_IP = os.environ.get("RAYMETA_NODE_IP", "127.0.0.2")


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a local instance on loopback.

    Returns True when this call started Ray (so the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        _token_auth_for_joining()
        _probe(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RaymetaError(f"--address {address}: cannot connect to a Ray cluster ({str(e).splitlines()[0][:160]})") from None
    else:
        # address="local": always a fresh instance; plain ray.init() would join the last cluster
        # `ray start` left on this machine (even a dead one, and then hang on it).
        ray.init(address="local", _node_ip_address=LOCAL_NODE_IP, dashboard_host="127.0.0.1", num_cpus=num_cpus,
                 include_dashboard=False, **kwargs)
    return True


def _token_auth_for_joining() -> None:
    """A client that joins a cluster with token authentication (Ray 2.60's default) must say so: Ray turns token
    mode on by itself only for an instance it starts, never for an explicit address. ``RAY_AUTH_MODE`` set by
    the user wins (``disabled`` for a cluster without tokens). Ray reads the mode into its cached config when
    ``ray`` is imported, which in ``raymeta`` has happened by now, so the cache is refreshed too, as Ray's own
    ``ray.init()`` does when it enables token mode for a new local instance."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"  # also for the processes this one starts
    Config.initialize("")


def _probe(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at ``host:port`` (ray.init would retry for long)."""
    import socket

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RaymetaError(f"--address {address}: expected host:port (or ray://host:port)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise RaymetaError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def feasible(opts: dict[str, Any], what: str = "each task actor") -> None:
    """On a fixed cluster (our local instance): a request no node can meet is an error now, not a
    PENDING actor forever. (An autoscaling cluster may add such a node, so it is not checked there.)"""
    import ray

    want = {"CPU": opts.get("num_cpus", 0), "GPU": opts.get("num_gpus", 0), **opts.get("resources", {})}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for key, amount in want.items():
        if amount and not any(node.get(key, 0) >= amount for node in nodes):
            have = max((node.get(key, 0) for node in nodes), default=0)
            raise RaymetaError(f"resources: {what} asks for {key}={amount:g}, but no node has that much "
                               f"(largest: {have:g}); change resources.* or the task's resources")


def actor_options(r: ResourcesConfig, n_actors: int, local: bool = False) -> tuple[dict[str, Any], int, str]:
    """Ray options, torch threads and device for each task actor.

    GPUs: one each when there are enough, else an equal fraction. CPUs: an equal share of
    the cluster's CPUs (fractional on a laptop), unless the config fixes them."""
    import ray

    total = ray.cluster_resources()
    gpus, cpus = float(total.get("GPU", 0)), float(total.get("CPU", 1))
    num_gpus = r.num_gpus_per_actor
    if num_gpus is None:
        num_gpus = 0.0 if gpus == 0 else (1.0 if gpus >= n_actors else math.floor(gpus / n_actors * 100) / 100)
    num_cpus = r.num_cpus_per_actor
    if num_cpus is None:
        num_cpus = 1.0 if num_gpus else max(0.01, math.floor(cpus / n_actors * 100) / 100)
    opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 0}
    if r.custom_resources:
        opts["resources"] = dict(r.custom_resources)
    if local:
        feasible(opts)
    threads = r.torch_threads or max(1, int(num_cpus))
    return opts, threads, "cuda" if num_gpus > 0 else "cpu"


def bundle_options(group: Any, n_actors: int) -> list[tuple[dict[str, Any], int, str]]:
    """Ray options, torch threads and device for actors placed in ``group``'s bundles 1..n.

    Bundle 0 is the owner's (a Ray Tune trial's driver); actor i takes bundle i + 1 and asks for
    exactly that bundle's resources, so a trial never competes with another for CPUs or GPUs."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundles = group.bundle_specs
    if len(bundles) < n_actors + 1:
        raise RaymetaError(f"placement group: {len(bundles)} bundles for a driver and {n_actors} task actors "
                           f"(needs {n_actors + 1})")
    out = []
    for i in range(n_actors):
        b = bundles[i + 1]
        cpus, gpus = float(b.get("CPU", 0)), float(b.get("GPU", 0))
        opts: dict[str, Any] = {
            "num_cpus": cpus, "num_gpus": gpus, "max_restarts": 0,
            "resources": {k: v for k, v in b.items() if k not in ("CPU", "GPU", "memory")},
            "scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i + 1),
        }
        out.append((opts, max(1, int(cpus)), "cuda" if gpus > 0 else "cpu"))
    return out


def get(refs: Any, timeout: float | None = None) -> Any:
    """``ray.get`` that re-raises a user error from a remote call as itself: one line, no traceback.

    When one of several calls fails, the others' errors are read too (often they fail together: every
    rank of a process group aborts, or loses a peer). Ray logs each error nobody read, traceback and all."""
    import ray

    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayError as e:
        if isinstance(refs, list) and not isinstance(e, ray.exceptions.GetTimeoutError):
            _read_all(refs)
        if isinstance(e, ray.exceptions.RayTaskError) and isinstance(e.cause, RaymetaError):
            raise e.cause from None
        raise


def _read_all(refs: list[Any], timeout_s: float = 10.0) -> None:
    import ray

    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            pass


def kill(actors: Any) -> None:
    """``ray.kill`` each of ``actors`` (an iterable of handles), the ones already dead included. A process group
    ends with its members."""
    import ray

    for a in list(actors):
        try:
            ray.kill(a)
        except Exception:  # already dead
            pass
