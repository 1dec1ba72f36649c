"""Connecting to Ray and sizing task actors. The one place that decides addresses and resources."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .config import ResourcesConfig
from .errors import RaymetaError

__all__ = ["connect", "actor_options", "bundle_options", "get", "kill", "LOCAL_NODE_IP", "NodeType", "ClusterView",
           "cluster_view", "own_instance", "autoscaler_node_types", "plan_actors", "request_of", "infeasible", "feasible",
           "actor_states", "unplaced", "placement_error"]

log = logging.getLogger(__name__)

# Ray turns 127.0.0.1 into the machine's interface address; any other loopback address is
# kept as given, so the embedded default really stays on loopback (see SECURITY.md).
LOCAL_NODE_IP = os.environ.get("RAYMETA_NODE_IP", "127.0.0.2")
_own_gcs: str | None = None  # the GCS address of the local instance connect() started in this process


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
        global _own_gcs
        _own_gcs = ray.get_runtime_context().gcs_address
    return True


def own_instance() -> bool:
    """Whether the Ray cluster this process is connected to is the local instance :func:`connect` started here (a
    fixed-size one, on this machine), not one it joined."""
    import ray

    try:
        return _own_gcs is not None and ray.is_initialized() and ray.get_runtime_context().gcs_address == _own_gcs
    except Exception:
        return False


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


@dataclass(frozen=True)
class NodeType:
    """A kind of node the cluster's autoscaler can add: its resources, and how many of it it may start."""

    name: str
    resources: Mapping[str, float]
    max_workers: int


@dataclass(frozen=True)
class ClusterView:
    """What sizing the task actors goes by. ``nodes``: each alive node's resources now. ``autoscaler``: True when
    the cluster has one (``node_types``: what it can add), False for a fixed cluster (our own local instance, or a
    head started without an autoscaling config), None when that cannot be told from here."""

    nodes: tuple[Mapping[str, float], ...]
    autoscaler: bool | None = False
    node_types: tuple[NodeType, ...] = ()

    def total(self, key: str) -> float:
        return float(sum(n.get(key, 0) for n in self.nodes))

    def addable(self, want: Mapping[str, float]) -> list[NodeType]:
        """The node types the autoscaler can add (none unless ``autoscaler``) that have all of ``want``."""
        if not self.autoscaler:
            return []
        return [t for t in self.node_types if t.max_workers > 0 and all(t.resources.get(k, 0) >= v for k, v in want.items())]

    def can_add(self, want: Mapping[str, float]) -> bool:
        return bool(self.addable(want))


def autoscaler_node_types() -> tuple[bool | None, tuple[NodeType, ...]]:
    """Whether the connected cluster has an autoscaler, and which node types it can add, read from one of two places:

    1. the cluster config in the GCS (``ray._private.state.state.get_cluster_config()``: node groups with their
       resources and ``max_count``), which an autoscaler that reports one writes (KubeRay's); Ray Data and Ray Train
       read it the same way;
    2. else the ``--autoscaling-config`` file of the cluster's monitor process (the ``monitor.py`` that ``ray start
       --head`` starts, found in ``/proc`` by its ``--gcs-address``), when it runs on this machine: a ``ray job
       submit`` entry point runs on the head, and a test cluster is local. The cluster launcher (``ray up``) passes
       ``~/ray_bootstrap_config.yaml``, its node types' resources filled in from the cloud's instance types;
       ``ray.cluster_utils.AutoscalingCluster`` passes a file of its own. A monitor without that flag only mirrors
       the nodes up (Ray's read-only provider): a fixed cluster.

    Returns ``(True, node types)``, ``(False, ())`` for a fixed cluster, or ``(None, ())`` when neither place can be
    read from here (a driver on a worker node, Ray Client, KubeRay's sidecar autoscaler without a reported config)."""
    import ray

    try:
        import ray._private.state

        config = ray._private.state.state.get_cluster_config()
    except Exception:  # an older or newer Ray without it, or no GCS answer: try the monitor
        config = None
    if config is not None and config.node_group_configs:
        groups = [g for g in config.node_group_configs if g.resources and g.max_count != 0]
        types = tuple(NodeType(g.name, dict(g.resources), 10**6 if g.max_count == -1 else g.max_count) for g in groups)
        # it can grow when a group may have more nodes than its minimum (Ray Data's test, is_autoscaling_enabled)
        return any(g.max_count == -1 or g.max_count > g.min_count for g in groups), types
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:
        return None, ()
    for argv in _monitor_cmdlines():
        if f"--gcs-address={gcs}" not in argv:
            continue
        flag = next((a.split("=", 1)[1] for a in argv if a.startswith("--autoscaling-config=")), None)
        if flag is None:
            return False, ()
        try:
            import yaml

            return True, node_types_of(yaml.safe_load(Path(flag).expanduser().read_text()))
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            return None, ()
    return None, ()


def _monitor_cmdlines() -> list[list[str]]:
    """The command lines of the Ray autoscaler monitor processes on this machine (Linux: ``/proc``)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.endswith("monitor.py") and "autoscaler" in a for a in argv[:3]):
            out.append(argv)
    return out


def node_types_of(config: Mapping[str, Any]) -> tuple[NodeType, ...]:
    """The worker node types of an autoscaler (cluster launcher) config: ``available_node_types`` less the head's,
    each with its ``max_workers`` (capped by the cluster's)."""
    cap = int(config.get("max_workers", 10**6))
    head = config.get("head_node_type")
    return tuple(NodeType(name, {k: float(v) for k, v in (t.get("resources") or {}).items()},
                          min(cap, int(t.get("max_workers", cap))))
                 for name, t in (config.get("available_node_types") or {}).items() if name != head)


def cluster_view() -> ClusterView:
    """The alive nodes' resources and, unless the cluster is our own local instance (fixed: :func:`own_instance`),
    :func:`autoscaler_node_types`."""
    import ray

    nodes = tuple(dict(n["Resources"]) for n in ray.nodes() if n.get("Alive"))
    if own_instance():
        return ClusterView(nodes, autoscaler=False)
    autoscaler, types = autoscaler_node_types()
    return ClusterView(nodes, autoscaler=autoscaler, node_types=types)


def plan_actors(r: ResourcesConfig, n_actors: int, view: ClusterView) -> tuple[dict[str, Any], int, str]:
    """Ray options, torch threads and device for each of ``n_actors`` task actors on the cluster ``view`` shows.
    No Ray: what :func:`actor_options` decides, from what it read.

    GPUs: ``num_gpus_per_actor`` when set, else ``gpus`` when a number; ``gpus: auto``: one whole GPU each when the
    autoscaler can add nodes with a GPU (and ``custom_resources``) or there is one for every actor now, else (a
    fixed cluster) an equal fraction of the GPUs up, or none. CPUs: ``num_cpus_per_actor`` when set; else 1 with a
    GPU, or on a cluster that can autoscale (or has no CPU up yet: only new nodes can have them); else an equal
    share of the CPUs up."""
    gpus, cpus = view.total("GPU"), view.total("CPU")
    if r.num_gpus_per_actor is not None:
        num_gpus = r.num_gpus_per_actor
    elif r.gpus != "auto":
        num_gpus = float(r.gpus)
    elif view.can_add({"GPU": 1, **r.custom_resources}) or gpus >= n_actors:
        num_gpus = 1.0
    else:
        num_gpus = 0.0 if gpus == 0 else math.floor(gpus / n_actors * 100) / 100
    grows = bool(view.autoscaler and any(t.max_workers > 0 for t in view.node_types))
    num_cpus = r.num_cpus_per_actor
    if num_cpus is None:
        num_cpus = 1.0 if num_gpus or grows or cpus == 0 else max(0.01, math.floor(cpus / n_actors * 100) / 100)
    opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 0}
    if r.custom_resources:
        opts["resources"] = dict(r.custom_resources)
    threads = r.torch_threads or max(1, int(num_cpus))
    return opts, threads, "cuda" if num_gpus > 0 else "cpu"


def request_of(opts: Mapping[str, Any]) -> dict[str, float]:
    """What a ``ray.remote`` option set asks a node for: CPU, GPU and custom resources (the nonzero ones)."""
    want = {"CPU": opts.get("num_cpus", 0), "GPU": opts.get("num_gpus", 0), **opts.get("resources", {})}
    return {k: float(v) for k, v in want.items() if v}


def _fmt(want: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in want.items())


def _fits(resources: Mapping[str, float], want: Mapping[str, float]) -> bool:
    return all(resources.get(k, 0) >= v for k, v in want.items())


def infeasible(opts: Mapping[str, Any], view: ClusterView, what: str = "each task actor") -> str | None:
    """Why ``opts`` can never be met on the cluster ``view`` shows, or None. A fixed cluster: no alive node has all
    of it. An autoscaling one: neither any alive node nor any node type it can add. (A cluster that cannot be told
    apart, ``autoscaler`` None, is never judged here: the bounded wait is.)"""
    want = request_of(opts)
    if view.autoscaler is None or any(_fits(n, want) for n in view.nodes) or view.can_add(want):
        return None
    fix = "change resources.* or the task's resources"
    for key, amount in want.items():
        if any(node.get(key, 0) >= amount for node in view.nodes) or view.can_add({key: amount}):
            continue
        have = max((node.get(key, 0) for node in view.nodes), default=0)
        if view.autoscaler:
            types = ", ".join(t.name for t in view.node_types) or "none"
            return (f"resources: {what} asks for {key}={amount:g}, but no node has that much (largest: {have:g}) and "
                    f"no node type the autoscaler can add has it ({types}); {fix}")
        return f"resources: {what} asks for {key}={amount:g}, but no node has that much (largest: {have:g}); {fix}"
    # each resource is somewhere, never all of them on one node
    also = " and no node type the autoscaler can add has all of it" if view.autoscaler else ""
    return f"resources: {what} asks for {_fmt(want)} on one node, but no node has all of it{also}; {fix}"


def feasible(opts: dict[str, Any], what: str = "each task actor", view: ClusterView | None = None) -> None:
    """A request no node can ever meet is an error now, not a PENDING actor forever: on a fixed cluster (our local
    instance) no alive node has enough; on an autoscaling one, no node type it can add has either."""
    problem = infeasible(opts, view if view is not None else cluster_view(), what)
    if problem:
        raise RaymetaError(problem)


def actor_options(r: ResourcesConfig, n_actors: int, local: bool = False,
                  view: ClusterView | None = None) -> tuple[dict[str, Any], int, str]:
    """Ray options, torch threads and device for each task actor (:func:`plan_actors` on :func:`cluster_view`), the
    request checked against what the cluster has and can add (:func:`feasible`). ``local`` is not needed any more
    (callers pass True for any cluster :func:`connect` joined too): whether the cluster is our own fixed instance
    is told by :func:`own_instance`."""
    view = view if view is not None else cluster_view()
    opts, threads, device = plan_actors(r, n_actors, view)
    feasible(opts, view=view)
    if view.autoscaler is not False:
        log.info("resources: %s; each of %d task actors asks for %s (device %s)", _describe(view), n_actors,
                 _fmt(request_of(opts)), device)
    return opts, threads, device


def _describe(view: ClusterView) -> str:
    if view.autoscaler is None:
        return (f"{len(view.nodes)} nodes up, no autoscaler seen from here (resources.gpus=1 asks for a GPU per actor "
                "all the same)")
    types = ", ".join(f"{t.name} ({_fmt(t.resources)}; up to {t.max_workers})" for t in view.node_types if t.max_workers)
    return f"{len(view.nodes)} nodes up, the autoscaler can add {types or 'none'}"


def actor_states(actors: Mapping[str, Any]) -> dict[str, tuple[str | None, int]]:
    """Key -> (state, worker pid) of each of ``actors`` (key -> handle), as the GCS's actor table holds them
    (``ray._private.state.actors``): state ``DEPENDENCIES_UNREADY``, ``PENDING_CREATION``, ``ALIVE``,
    ``RESTARTING`` or ``DEAD``; pid 0 until a node has leased the actor a worker process (it is set while the
    constructor runs). (None, 0) for an actor the table cannot tell about."""
    import ray._private.state

    out: dict[str, tuple[str | None, int]] = {}
    for key, handle in actors.items():
        try:
            info = ray._private.state.actors(handle._actor_id.hex()) or {}
        except Exception:
            info = {}
        out[key] = (info.get("State"), int(info.get("Pid") or 0))
    return out


def unplaced(actors: Mapping[str, Any]) -> list[str]:
    """Keys of ``actors`` (key -> handle) that Ray has not placed on a node yet: created, but still waiting for
    resources (:func:`actor_states`: not alive, restarting or dead, and no worker process yet). An actor the
    table cannot tell about counts as unplaced."""
    return [key for key, (state, pid) in actor_states(actors).items()
            if state not in ("ALIVE", "DEAD", "RESTARTING") and not pid]


def placement_error(waiting: Mapping[str, Mapping[str, float]], view: ClusterView, waited_s: float) -> str:
    """The one line for task actors (key -> request, see :func:`request_of`) still not placed after ``waited_s``
    on the cluster ``view`` shows now: what they ask for, and which resource no node has (or that the nodes
    that have it are taken)."""
    key, want = next(iter(waiting.items()))
    more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
    task = key.split("#", 1)[0]
    head = f"resources: task '{task}' actor{more} still waits after {waited_s:.0f} s for a node with {_fmt(want)}: "
    missing = {k: v for k, v in want.items() if not any(n.get(k, 0) >= v for n in view.nodes)}
    if missing:
        why = f"no node has {_fmt(missing)}"
        if view.autoscaler:
            types = [t.name for t in view.addable(want)]
            why += (f" and the autoscaler added none (node types with it: {', '.join(types)})" if types else
                    " and no node type the autoscaler can add has it")
        elif view.autoscaler is None:
            why += " and none joined"
    else:
        why = "the nodes that have it are taken (by other actors or jobs)"
        if view.autoscaler:
            why += " and the autoscaler added none (at its max_workers?)"
    return (head + why + "; change resources.* or the task's resources, free the cluster, or raise "
            "resources.placement_timeout_s")


def bundle_options(group: Any, n_actors: int, after: int = 0) -> list[tuple[dict[str, Any], int, str]]:
    """Ray options, torch threads and device for actors placed in ``group``'s bundles 1..n (``after``: the bundles
    after the first ``after`` actors', which another pool placed: ``meta.weighting``'s target actors).

    Bundle 0 is the owner's (a Ray Tune trial's driver); actor i takes bundle i + 1 and asks for
    exactly that bundle's resources, so a trial never competes with another for CPUs or GPUs."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundles = group.bundle_specs
    if len(bundles) < after + n_actors + 1:
        raise RaymetaError(f"placement group: {len(bundles)} bundles for a driver and {after + n_actors} actors "
                           f"(needs {after + n_actors + 1})")
    out = []
    for i in range(after, after + n_actors):
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
