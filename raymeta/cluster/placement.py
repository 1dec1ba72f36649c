"""Sizing and placing task actors: the Ray options each asks for (from the cluster view, or from a
placement group's bundles), and the one-line errors for a request no node can meet or one still
unmet after a wait; the options of Ray tasks that declare memory. The one place that decides
resources."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, TypeVar

from ..config import ResourcesConfig
from ..errors import RaymetaError
from .discovery import ClusterView, cluster_view
from .memory import GB

__all__ = ["plan_actors", "request_of", "infeasible", "feasible", "actor_options",
           "placement_error", "bundle_options", "task_options"]

log = logging.getLogger(__name__)
K = TypeVar("K")
# what a refused task actor's line tells the user to change
ACTOR_FIX = "change resources.* or the task's resources"


def plan_actors(r: ResourcesConfig, n_actors: int,
                view: ClusterView) -> tuple[dict[str, Any], int, str]:
    """Ray options, torch threads and device for each of ``n_actors`` task actors on the cluster
    ``view`` shows. No Ray: what :func:`actor_options` decides, from what it read.

    GPUs: ``num_gpus_per_actor`` when set, else ``gpus`` when a number; ``gpus: auto``: one whole
    GPU each when the autoscaler can add nodes with a GPU (and ``custom_resources``) or there is one
    for every actor now, else (a fixed cluster) an equal fraction of the GPUs up, or none. CPUs:
    ``num_cpus_per_actor`` when set; else 1 with a GPU, or on a cluster that can autoscale (or has
    no CPU up yet: only new nodes can have them); else an equal share of the CPUs up."""
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
        if num_gpus or grows or cpus == 0:
            num_cpus = 1.0
        else:
            num_cpus = max(0.01, math.floor(cpus / n_actors * 100) / 100)
    opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 0}
    if r.custom_resources:
        opts["resources"] = dict(r.custom_resources)
    threads = r.torch_threads or max(1, int(num_cpus))
    return opts, threads, "cuda" if num_gpus > 0 else "cpu"


def request_of(opts: Mapping[str, Any]) -> dict[str, float]:
    """What a ``ray.remote`` option set asks a node for: CPU, GPU, memory (bytes) and custom
    resources (the nonzero ones)."""
    want = {"CPU": opts.get("num_cpus", 0), "GPU": opts.get("num_gpus", 0),
            "memory": opts.get("memory", 0), **opts.get("resources", {})}
    return {k: float(v) for k, v in want.items() if v}


def _amount(key: str, v: float) -> str:
    return f"{key}={v / GB:.2f}GB" if key == "memory" else f"{key}={v:g}"


def _fmt(want: Mapping[str, float]) -> str:
    return ", ".join(_amount(k, v) for k, v in want.items())


def _fits(resources: Mapping[str, float], want: Mapping[str, float]) -> bool:
    return all(resources.get(k, 0) >= v for k, v in want.items())


def infeasible(opts: Mapping[str, Any], view: ClusterView, what: str = "each task actor",
               fix: str = ACTOR_FIX) -> str | None:
    """Why ``opts`` can never be met on the cluster ``view`` shows, or None. A fixed cluster: no
    alive node has all of it. An autoscaling one: neither any alive node nor any node type it can
    add. (A cluster that cannot be told apart, ``autoscaler`` None, is never judged here: the
    bounded wait is.) ``fix``: what the line tells the user to change."""
    want = request_of(opts)
    if view.autoscaler is None or any(_fits(n, want) for n in view.nodes) or view.can_add(want):
        return None
    for key, amount in want.items():
        if any(node.get(key, 0) >= amount for node in view.nodes) or view.can_add({key: amount}):
            continue
        have = max((node.get(key, 0) for node in view.nodes), default=0)
        asks = (f"resources: {what} asks for {_amount(key, amount)}, but no node has that much "
                f"(largest: {_amount(key, have).split('=')[1]})")
        if view.autoscaler:
            types = ", ".join(t.name for t in view.node_types) or "none"
            return f"{asks} and no node type the autoscaler can add has it ({types}); {fix}"
        return f"{asks}; {fix}"
    # each resource is somewhere, never all of them on one node
    also = " and no node type the autoscaler can add has all of it" if view.autoscaler else ""
    return (f"resources: {what} asks for {_fmt(want)} on one node, but no node has all of "
            f"it{also}; {fix}")


def feasible(opts: dict[str, Any], what: str = "each task actor",
             view: ClusterView | None = None, fix: str = ACTOR_FIX) -> None:
    """A request no node can ever meet is an error now, not a PENDING actor forever: on a fixed
    cluster (our local instance) no alive node has enough; on an autoscaling one, no node type it
    can add has either."""
    problem = infeasible(opts, view if view is not None else cluster_view(), what, fix)
    if problem:
        raise RaymetaError(problem)


def task_options(memory: Mapping[K, int], num_cpus: float, view: ClusterView,
                 what: Callable[[K], str], fix: str) -> dict[K, dict[str, Any]]:
    """``ray.remote`` options for Ray tasks (evaluation and cross-validation runs), key -> its CPUs
    and the ``memory`` bytes it declares, so that a node runs at once only as many as its memory
    holds instead of Ray's memory monitor killing one. A run no node can ever hold is one line
    now (:func:`feasible`, ``what(key)`` naming it, ``fix`` what to change), largest first,
    before any starts. On an autoscaling cluster whose node types do not state their memory none
    is declared: Ray's autoscaler would add no node for it (as for task actors,
    :meth:`raymeta.train.pool.ActorPool.start`)."""
    declare = view.scales_by_memory
    if not declare:
        log.info("resources: the autoscaler's node types do not state their memory: the runs "
                 "declare none")
    options = {key: {"num_cpus": num_cpus, **({"memory": int(mem)} if declare else {})}
               for key, mem in memory.items()}
    for key, opts in sorted(options.items(), key=lambda kv: -kv[1].get("memory", 0)):
        feasible(opts, what(key), view=view, fix=fix)
    return options


def actor_options(r: ResourcesConfig, n_actors: int, local: bool = False,
                  view: ClusterView | None = None) -> tuple[dict[str, Any], int, str]:
    """Ray options, torch threads and device for each task actor (:func:`plan_actors` on
    :func:`~raymeta.cluster.discovery.cluster_view`), the request checked against what the cluster
    has and can add (:func:`feasible`). ``local`` is not needed any more (callers pass True for any
    cluster :func:`~raymeta.cluster.connect.connect` joined too): whether the cluster is our own
    fixed instance is told by :func:`~raymeta.cluster.connect.own_instance`."""
    view = view if view is not None else cluster_view()
    opts, threads, device = plan_actors(r, n_actors, view)
    feasible(opts, view=view)
    if view.autoscaler is not False:
        log.info("resources: %s; each of %d task actors asks for %s (device %s)", _describe(view),
                 n_actors, _fmt(request_of(opts)), device)
    return opts, threads, device


def _describe(view: ClusterView) -> str:
    if view.autoscaler is None:
        return (f"{len(view.nodes)} nodes up, no autoscaler seen from here (resources.gpus=1 asks "
                "for a GPU per actor all the same)")
    types = ", ".join(f"{t.name} ({_fmt(t.resources)}; up to {t.max_workers})"
                      for t in view.node_types if t.max_workers)
    return f"{len(view.nodes)} nodes up, the autoscaler can add {types or 'none'}"


def placement_error(waiting: Mapping[str, Mapping[str, float]], view: ClusterView,
                    waited_s: float) -> str:
    """The one line for task actors (key -> request, see :func:`request_of`) still not placed after
    ``waited_s`` on the cluster ``view`` shows now: what they ask for, and which resource no node
    has (or that the nodes that have it are taken)."""
    key, want = next(iter(waiting.items()))
    more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
    task = key.split("#", 1)[0]
    head = (f"resources: task '{task}' actor{more} still waits after {waited_s:.0f} s for a node "
            f"with {_fmt(want)}: ")
    missing = {k: v for k, v in want.items() if not any(n.get(k, 0) >= v for n in view.nodes)}
    if missing:
        why = f"no node has {_fmt(missing)}"
        if view.autoscaler:
            types = [t.name for t in view.addable(want)]
            why += (f" and the autoscaler added none (node types with it: {', '.join(types)})"
                    if types else " and no node type the autoscaler can add has it")
        elif view.autoscaler is None:
            why += " and none joined"
    else:
        why = "the nodes that have it are taken (by other actors or jobs)"
        if view.autoscaler:
            why += " and the autoscaler added none (at its max_workers?)"
    return (head + why + "; change resources.* or the task's resources, free the cluster, or raise "
            "resources.placement_timeout_s")


def bundle_options(group: Any, n_actors: int,
                   after: int = 0) -> list[tuple[dict[str, Any], int, str]]:
    """Ray options, torch threads and device for actors placed in ``group``'s bundles 1..n
    (``after``: the bundles after the first ``after`` actors', which another pool placed:
    ``meta.weighting``'s target actors).

    Bundle 0 is the owner's (a Ray Tune trial's driver); actor i takes bundle i + 1 and asks for
    exactly that bundle's resources, so a trial never competes with another for CPUs or GPUs."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundles = group.bundle_specs
    if len(bundles) < after + n_actors + 1:
        raise RaymetaError(f"placement group: {len(bundles)} bundles for a driver and "
                           f"{after + n_actors} actors (needs {after + n_actors + 1})")
    out = []
    for i in range(after, after + n_actors):
        b = bundles[i + 1]
        cpus, gpus = float(b.get("CPU", 0)), float(b.get("GPU", 0))
        opts: dict[str, Any] = {
            "num_cpus": cpus, "num_gpus": gpus, "max_restarts": 0,
            "resources": {k: v for k, v in b.items() if k not in ("CPU", "GPU", "memory")},
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=i + 1),
        }
        out.append((opts, max(1, int(cpus)), "cuda" if gpus > 0 else "cpu"))
    return out
