"""What the connected cluster has (its alive nodes' resources) and what its autoscaler can add (its
node types): the :class:`ClusterView` that sizing the task actors goes by."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .connect import own_instance
from .gcs import ray_state

__all__ = ["NodeType", "ClusterView", "autoscaler_node_types", "node_types_of", "cluster_view"]


@dataclass(frozen=True)
class NodeType:
    """A kind of node the cluster's autoscaler can add: its resources, and how many of it it may
    start."""

    name: str
    resources: Mapping[str, float]
    max_workers: int


@dataclass(frozen=True)
class ClusterView:
    """What sizing the task actors goes by. ``nodes``: each alive node's resources now.
    ``autoscaler``: True when the cluster has one (``node_types``: what it can add), False for a
    fixed cluster (our own local instance, or a head started without an autoscaling config), None
    when that cannot be told from here."""

    nodes: tuple[Mapping[str, float], ...]
    autoscaler: bool | None = False
    node_types: tuple[NodeType, ...] = ()

    def total(self, key: str) -> float:
        return float(sum(n.get(key, 0) for n in self.nodes))

    def addable(self, want: Mapping[str, float]) -> list[NodeType]:
        """The node types the autoscaler can add (none unless ``autoscaler``) that have all of
        ``want``."""
        if not self.autoscaler:
            return []
        # a node type that does not say its memory (the cluster launcher fills it in for cloud
        # instance types, a hand-written one may not) is not judged on memory
        return [t for t in self.node_types
                if t.max_workers > 0 and all(t.resources.get(k, 0) >= v for k, v in want.items()
                                             if k != "memory" or "memory" in t.resources)]

    @property
    def scales_by_memory(self) -> bool:
        """Whether actors that declare memory can make this cluster grow: not when its autoscaler
        has a node type that does not state its memory (Ray's autoscaler then adds no node for a
        request with memory, and the actors wait forever); a fixed cluster holds what it holds."""
        return not self.autoscaler or all("memory" in t.resources for t in self.node_types
                                          if t.max_workers > 0)

    def can_add(self, want: Mapping[str, float]) -> bool:
        return bool(self.addable(want))


def autoscaler_node_types() -> tuple[bool | None, tuple[NodeType, ...]]:
    """Whether the connected cluster has an autoscaler, and which node types it can add, read from
    one of two places:

    1. the cluster config in the GCS (:func:`~raymeta.cluster.gcs.ray_state`'s
       ``state.get_cluster_config()``: node groups with their resources and ``max_count``), which an
       autoscaler that reports one writes (KubeRay's); Ray Data and Ray Train read it the same way;
    2. else the ``--autoscaling-config`` file of the cluster's monitor process (the ``monitor.py``
       that ``ray start --head`` starts, found in ``/proc`` by its ``--gcs-address``), when it runs
       on this machine: a ``ray job submit`` entry point runs on the head, and a test cluster is
       local. The cluster launcher (``ray up``) passes ``~/ray_bootstrap_config.yaml``, its node
       types' resources filled in from the cloud's instance types;
       ``ray.cluster_utils.AutoscalingCluster`` passes a file of its own. A monitor without that
       flag only mirrors the nodes up (Ray's read-only provider): a fixed cluster.

    Returns ``(True, node types)``, ``(False, ())`` for a fixed cluster, or ``(None, ())`` when
    neither place can be read from here (a driver on a worker node, Ray Client, KubeRay's sidecar
    autoscaler without a reported config)."""
    import ray

    try:
        config = ray_state().state.get_cluster_config()
    except Exception:  # an older or newer Ray without it, or no GCS answer: try the monitor
        config = None
    if config is not None and config.node_group_configs:
        groups = [g for g in config.node_group_configs if g.resources and g.max_count != 0]
        types = tuple(NodeType(g.name, dict(g.resources),
                               10**6 if g.max_count == -1 else g.max_count) for g in groups)
        # it can grow when a group may have more nodes than its minimum (Ray Data's test,
        # is_autoscaling_enabled)
        return any(g.max_count == -1 or g.max_count > g.min_count for g in groups), types
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:
        return None, ()
    for argv in _monitor_cmdlines():
        if f"--gcs-address={gcs}" not in argv:
            continue
        flag = next((a.split("=", 1)[1] for a in argv
                     if a.startswith("--autoscaling-config=")), None)
        if flag is None:
            return False, ()
        try:
            import yaml

            return True, node_types_of(yaml.safe_load(Path(flag).expanduser().read_text()))
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            return None, ()
    return None, ()


def _monitor_cmdlines() -> list[list[str]]:
    """The command lines of the Ray autoscaler monitor processes on this machine (Linux:
    ``/proc``)."""
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
    """The worker node types of an autoscaler (cluster launcher) config: ``available_node_types``
    less the head's, each with its ``max_workers`` (capped by the cluster's)."""
    cap = int(config.get("max_workers", 10**6))
    head = config.get("head_node_type")
    return tuple(NodeType(name, {k: float(v) for k, v in (t.get("resources") or {}).items()},
                          min(cap, int(t.get("max_workers", cap))))
                 for name, t in (config.get("available_node_types") or {}).items() if name != head)


def cluster_view() -> ClusterView:
    """The alive nodes' resources and, unless the cluster is our own local instance (fixed:
    :func:`~raymeta.cluster.connect.own_instance`), :func:`autoscaler_node_types`."""
    import ray

    nodes = tuple(dict(n["Resources"]) for n in ray.nodes() if n.get("Alive"))
    if own_instance():
        return ClusterView(nodes, autoscaler=False)
    autoscaler, types = autoscaler_node_types()
    return ClusterView(nodes, autoscaler=autoscaler, node_types=types)
