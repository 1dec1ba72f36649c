"""``ActorPool``: the task actors of a run, and the ones kept between runs, in one place.

One actor per task replica, keyed ``<task>`` or ``<task>#<r>``
(:func:`~raymeta.config.resolve.replica_key`). The pool starts them (sized by ``resources.*``, or in
the bundles of a Ray Tune trial's placement group), resets ones started before to another
configuration (``TaskActor.reset``), checks that they compute for the driver's layout, tells which
are lost, and ends them. The trainer holds one for its run
(:class:`~raymeta.train.trainer.MetaTrainer`); Ray Tune (one per trial process), ``raymeta
benchmark`` (one per sweep) and the integration tests (one per module) hold one to lend its actors
to the next trainer: process start-up (importing torch and transformers, loading the model; on a
GPU, a CUDA context too) costs seconds per actor, a reset a fraction of that.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

from ..cluster import (
    ClusterView,
    actor_options,
    actor_states,
    bundle_options,
    cluster_view,
    feasible,
    get,
    kill,
    placement_error,
    request_of,
    unplaced,
)
from ..cluster.memory import activation_values, memory_room_error, worker_memory_bytes
from ..config import ExperimentConfig
from ..config.resolve import actor_keys
from ..core.model import ParamLayout
from ..core.task_sampling import assign_tasks
from ..errors import RaymetaError
from ..tasks.holdout import holdout_reason
from .actor import TaskActor
from .worker import TaskHandle, TaskWorker, worker_of

__all__ = ["ActorPool", "actor_keys", "target_count", "worker_count"]

log = logging.getLogger("raymeta.train")

POLL_S = 2.0  # how often a wait for the actors to be placed looks again


def _fit(cfg: ExperimentConfig) -> tuple[Any, ...]:
    """What an actor started for ``cfg`` was sized for: which actors, with which resources, and how
    many target actors (``meta.weighting.rule: alignment``) share the cluster with them."""
    return actor_keys(cfg), cfg.resources.model_dump(), {t.name: t.resources
                                                         for t in cfg.tasks}, target_count(cfg)


def target_count(cfg: ExperimentConfig) -> int:
    """How many target actors a run of ``cfg`` starts beside its task actors (``meta.weighting.rule:
    alignment``)."""
    w = cfg.meta.weighting
    if w.rule != "alignment":
        return 0
    v = cfg.eval.validation
    # one held-out task per task taking part
    if w.target is None and v is not None and v.holdout_classes is not None:
        return sum(1 for t in cfg.tasks if holdout_reason(t) is None)
    return len(w.target if w.target is not None else v.tasks if v else [])


def worker_count(cfg: ExperimentConfig, actors: int, memory: Mapping[str, int] | None,
                 view: ClusterView | None) -> int | None:
    """How many workers compute the ``actors`` task actors of ``cfg`` (``resources.workers``); None
    when each gets its own process (the setting is None, or not below their number). ``auto``: one
    per GPU of the cluster (``resources.gpus`` not 0), else one per ``num_cpus_per_actor`` (1) of
    its CPUs, and on a fixed cluster no more than its memory holds at the largest task's
    ``memory`` each; inside a Ray Tune trial (no ``view``), one per task actor."""
    w = cfg.resources.workers
    if w == "auto":
        if view is None:
            return None
        r = cfg.resources
        gpus = view.total("GPU") if r.gpus != 0 and not r.num_gpus_per_actor == 0 else 0
        w = int(gpus) if gpus >= 1 else int(view.total("CPU") // (r.num_cpus_per_actor or 1.0))
        if memory and view.autoscaler is False:
            room = sum(float(node.get("memory", 0)) for node in view.nodes)
            w = min(w, int(room // max(memory.values())))
        w = max(1, w)
    return w if w is not None and w < actors else None


def _what(share: list[tuple[str, str, int]], pooled: bool) -> str:
    """How a one-line error names a process: its task, or a worker and its first tasks."""
    if not pooled:
        return f"task '{share[0][1]}'"
    names = [k for k, _, _ in share]
    more = f", and {len(names) - 3} more" if len(names) > 3 else ""
    return f"the worker of tasks {', '.join(names[:3])}{more}"


class ActorPool:
    """Task actors keyed like the trainer's. ``owned``: :meth:`release` ends them (not actors
    adopted from another pool: their owner ends them).

    ``options``: fixed ``ray.remote`` options for every actor :meth:`lend` starts (with ``threads``
    torch threads on ``device``), instead of sizing them to each configuration: the test suite's
    actors reserve no CPU, so one fits any configuration and a missing key is started next to the
    others."""

    def __init__(self, *, options: Mapping[str, Any] | None = None, threads: int | None = None,
                 device: str = "cpu"):
        self.actors: dict[str, Any] = {}
        # actor key -> its torch device type, as :meth:`check` found it
        self.devices: dict[str, str] = {}
        self.owned = True
        # what the held actors were started (or reset) for
        self._fits: tuple[Any, ...] | None = None
        self._options = dict(options) if options is not None else None
        self._threads, self._device = threads, device
        # actors :meth:`start` started and :meth:`check` has not yet seen placed: what each asks
        # for, the cluster they were sized on, when, and how long they may wait
        # (resources.placement_timeout_s)
        self._placing: tuple[dict[str, dict[str, float]], ClusterView, float, float] | None = None
        # the memory each process :meth:`start` started declared to Ray
        self.declared: list[int] = []

    # -- a run's actors ---------------------------------------------------------------------

    def start(self, cfg: ExperimentConfig, *, local: bool, others: int = 0,
              after: int = 0, memory: Mapping[str, int] | None = None,
              memory_others: Sequence[int] = ()) -> dict[str, Any]:
        """One new actor per task replica of ``cfg`` (tasks with weight 0 get none). Inside a Ray
        Tune trial, actor i takes bundle i + 1 of the trial's placement group (bundle 0 is the
        trial's own); else ``resources.*`` size them, and per-task custom resources pin a task to a
        node type. A request no node can meet fails at once on a fixed cluster (our own local
        instance, or one whose head runs no autoscaler), and on an autoscaling one when no node type
        it can add meets it either (:func:`~raymeta.cluster.feasible`). The actors are placed
        asynchronously: :meth:`check` waits for them, ``resources.placement_timeout_s`` at most
        without progress. ``others``: how many more actors of the same size another pool starts
        beside these (``meta.weighting``'s target actors): the share of the cluster each actor is
        sized for counts them too. ``after``: inside a Ray Tune trial, the first ``after`` actor
        bundles are another pool's (the target actors come after the task actors). (``local``, the
        caller's word that Ray is its own instance, is not needed:
        :func:`~raymeta.cluster.cluster_view` tells.) ``memory``: actor key -> the bytes it
        declares to Ray (:meth:`~raymeta.train.state.StepState.actor_memory`); on a fixed cluster a
        run whose actors, with the ``memory_others`` of another pool's, cannot all fit stops here
        in one line, before any actor starts
        (:func:`~raymeta.cluster.memory.memory_room_error`)."""
        import ray

        group = ray.util.get_current_placement_group()
        view = None if group is not None else cluster_view()
        if memory and view is not None and not view.scales_by_memory:
            log.info("resources: the autoscaler's node types do not state their memory: the task "
                     "actors declare none (resources.memory_per_actor)")
            memory, memory_others = None, ()
        shares = self._shares(cfg, memory, view)
        n, pooled = len(shares), len(shares) < sum(len(ks) for ks in actor_keys(cfg).values())
        if group is not None:
            placed = bundle_options(group, n, after=after)
        else:
            opts, threads, device = actor_options(cfg.resources, n + others, view=view)
        # slots (key, task, replica), options, threads, device: one per process
        sized: list[tuple[list[tuple[str, str, int]], dict[str, Any], int, str]] = []
        for i, share in enumerate(shares):
            if group is not None:
                task_opts, threads, device = placed[i]
            else:
                task_opts = dict(opts)
                custom: dict[str, float] = {}  # a worker goes where each of its tasks may
                for _, name, _ in share:
                    for res, v in cfg.task(name).resources.items():
                        custom[res] = max(custom.get(res, 0.0), v)
                if custom:
                    task_opts["resources"] = {**opts.get("resources", {}), **custom}
                if memory:
                    task_opts["memory"] = worker_memory_bytes([memory[k] for k, _, _ in share])
                if custom or memory:  # before any actor starts
                    feasible(task_opts, _what(share, pooled), view=view)
            sized.append((share, task_opts, threads, device))
        if memory and view is not None and view.autoscaler is False:
            sizes = [o["memory"] for _, o, _, _ in sized] + list(memory_others)
            problem = memory_room_error(sizes, view.nodes)
            if problem:
                raise RaymetaError(problem)
        cfg_json = cfg.model_dump_json()
        self.actors, self.owned, self._fits = {}, True, _fit(cfg)
        self.declared = [int(o.get("memory", 0)) for _, o, _, _ in sized]
        requests: dict[str, dict[str, float]] = {}
        for share, task_opts, threads, device in sized:
            if not pooled:  # one actor per task
                (key, name, r), = share
                handle = ray.remote(TaskActor).options(**task_opts).remote(cfg_json, name,
                                                                           threads, device, r)
                self.actors[key], requests[key] = handle, request_of(task_opts)
                continue
            worker = ray.remote(TaskWorker).options(**task_opts).remote(
                cfg_json, [(name, r) for _, name, r in share], threads, device)
            for key, _, _ in share:
                self.actors[key], requests[key] = TaskHandle(worker, key), request_of(task_opts)
        if view is not None:
            self._placing = (requests, view, time.monotonic(), cfg.resources.placement_timeout_s)
        return self.actors

    def _shares(self, cfg: ExperimentConfig, memory: Mapping[str, int] | None,
                view: ClusterView | None) -> list[list[tuple[str, str, int]]]:
        """The task actors of ``cfg`` as (key, task, replica), grouped by the process that computes
        them: one each, or with ``resources.workers`` below their number, W groups balanced by
        cost (:func:`~raymeta.core.task_sampling.assign_tasks`; a task's cost is its widest
        episode's activations, :func:`~raymeta.cluster.memory.activation_values`, which is what a
        step spends on it)."""
        slots = [(key, name, r) for name, ks in actor_keys(cfg).items()
                 for r, key in enumerate(ks)]
        n = worker_count(cfg, len(slots), memory, view)
        if n is None:
            return [[slot] for slot in slots]
        if cfg.meta.reduce == "collective":
            raise RaymetaError(f"resources.workers: {n} workers for {len(slots)} task actors need "
                               "meta.reduce=driver (a process group has one rank per task)")
        task_cost = activation_values(cfg)  # whatever memory the actors declare
        costs = {key: task_cost[name] for key, name, _ in slots}
        try:
            keys = assign_tasks(costs, n, {key: name for key, name, _ in slots})
        except ValueError as e:
            raise RaymetaError(f"resources.workers: {e}") from None
        by_key = {slot[0]: slot for slot in slots}
        return [[by_key[k] for k in share] for share in keys]

    def adopt(self, given: Mapping[str, Any], cfg: ExperimentConfig) -> dict[str, Any]:
        """Actors started elsewhere (``MetaTrainer(actors=...)``), reset to ``cfg``; :meth:`release`
        leaves them to their owner. Every key of ``cfg`` must be among them."""
        keys = actor_keys(cfg)
        missing = [k for ks in keys.values() for k in ks if k not in given]
        if missing:
            raise RaymetaError(f"task '{missing[0]}': no actor among the ones given to reuse "
                               f"({', '.join(given)})")
        self.actors, self.owned, self._fits = {k: given[k] for ks in keys.values()
                                               for k in ks}, False, _fit(cfg)
        cfg_json = cfg.model_dump_json()
        workers: dict[Any, list[tuple[str, int]]] = {}  # a worker's tasks are reset together
        singles = []
        for name, ks in keys.items():
            for r, k in enumerate(ks):
                if isinstance(self.actors[k], TaskHandle):
                    workers.setdefault(self.actors[k].worker, []).append((name, r))
                else:
                    singles.append(self.actors[k].reset.remote(cfg_json, name, r))
        get(singles + [w.reset.remote(cfg_json, slots) for w, slots in workers.items()])
        return self.actors

    def check(self, layout: ParamLayout, frozen: float) -> dict[str, str]:
        """Every actor computes for the driver's ``layout`` and loaded the same frozen weights (Σ|w|
        ``frozen``). Returns the node of each actor. Actors :meth:`start` started may first have to
        be placed: see
        :meth:`_wait_placed`."""
        refs = {key: a.describe.remote() for key, a in self.actors.items()}
        self._wait_placed(refs)
        described = get(list(refs.values()))
        for d in described:
            if d["names"] != list(layout.names) or d["shapes"] != [list(s) for s in layout.shapes]:
                raise RaymetaError(f"task '{d['task']}': its model's shared parameters differ from "
                                   f"the driver's ({d['numel']} vs {layout.numel} values)")
            # Frozen parameters never travel: each process loaded them, and they must be the same
            # weights.
            if abs(d["frozen"] - frozen) > 1e-6 * max(1.0, abs(frozen)):
                raise RaymetaError(f"task '{d['task']}': its frozen encoder weights differ from "
                                   "the driver's "
                                   f"(Σ|w| {d['frozen']:.6g} vs {frozen:.6g}): every node must "
                                   "load the same model")
            log.info("task '%s' (%s): actor pid %s on %s, %d threads, %d train rows",
                     d["task"], d["type"], d["pid"], d["node"], d["threads"], d["train_rows"])
        self.devices = {d["task"]: d["device"] for d in described}
        return {d["task"]: d["node"] for d in described}

    def _wait_placed(self, refs: Mapping[str, Any]) -> None:
        """Until every actor :meth:`start` started is placed on a node (its first call, ``refs``,
        answered or the actor on a node), or ``resources.placement_timeout_s`` pass in which no
        further actor is placed and no node joins: then :class:`~raymeta.errors.RaymetaError`, one
        line naming what the waiting actors ask for and which resource no node has
        (:func:`~raymeta.cluster.placement_error`). An autoscaler adding nodes one after the other,
        or a cluster freeing resources, keeps it waiting; a request never met does not hang the
        run."""
        import ray

        if self._placing is None:
            return
        requests, view, since, timeout_s = self._placing
        self._placing = None
        pending = dict(refs)
        waiting_before, nodes_before, told = len(pending), len(view.nodes), False
        while pending:
            _, not_ready = ray.wait(list(pending.values()), num_returns=len(pending),
                                    timeout=POLL_S)
            still = set(not_ready)
            pending = {k: ref for k, ref in pending.items() if ref in still}
            waiting = unplaced({k: self.actors[k] for k in pending})
            if not waiting:
                return  # placed, only still starting up (or failed: check's get says how)
            nodes = tuple(dict(n["Resources"]) for n in ray.nodes() if n.get("Alive"))
            # progress: the wait starts again
            if len(waiting) < waiting_before or len(nodes) > nodes_before:
                since, waiting_before = time.monotonic(), len(waiting)
                nodes_before = max(nodes_before, len(nodes))
            waited = time.monotonic() - since
            if waited > timeout_s:
                now = ClusterView(nodes, view.autoscaler, view.node_types)
                raise RaymetaError(placement_error({k: requests[k] for k in waiting}, now, waited))
            if not told and waited > 10:
                told = True
                log.info("resources: %d task actor(s) wait to be placed (%s)%s; "
                         "resources.placement_timeout_s=%g",
                         len(waiting), ", ".join(waiting[:4]),
                         ", for the autoscaler to add nodes" if view.autoscaler else "", timeout_s)

    def lost(self, timeout_s: float = 60.0) -> list[str]:
        """Keys of the actors whose process is gone: every actor is asked for its pid. Returns once
        the GCS holds them dead too (:meth:`_settle`)."""
        import ray

        probes = {key: a.pid.remote() for key, a in self.actors.items()}
        ray.wait(list(probes.values()), num_returns=len(probes), timeout=timeout_s)
        lost = []
        for key, ref in probes.items():
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError:
                lost.append(key)
            except ray.exceptions.GetTimeoutError:  # alive, only slow to answer
                pass
        self._settle(lost, timeout_s)
        return lost

    def _settle(self, keys: list[str], timeout_s: float) -> None:
        """Wait (``timeout_s`` at most) until the GCS no longer holds any of the lost actors
        ``keys`` alive. A call to an actor whose node is gone fails at once, but the GCS marks the
        node dead (and then its actors) only when its health checks have failed, seconds later; an
        actor started before that may be placed on the lost node again and die there too, spending
        one more of checkpoint.max_actor_restarts. (An actor whose process alone was killed is
        marked dead at once by its node.)"""
        end = time.monotonic() + timeout_s
        while keys and time.monotonic() < end:
            if all(state != "ALIVE" for state,
                   _ in actor_states({k: self.actors[k] for k in keys}).values()):
                return
            time.sleep(0.5)

    def release(self) -> None:
        """End the actors this pool owns, and forget every one."""
        if self.owned:
            kill({id(worker_of(a)): worker_of(a) for a in self.actors.values()}.values())
        self.actors, self._fits, self._placing = {}, None, None

    def shares(self) -> list[list[str]] | None:
        """``resources.workers``: each worker's task actor keys, in task order (None: a process per
        task)."""
        groups: dict[int, list[str]] = {}
        for key, a in self.actors.items():
            if isinstance(a, TaskHandle):
                groups.setdefault(id(a.worker), []).append(key)
        return list(groups.values()) or None

    @property
    def processes(self) -> int:
        """How many processes compute the task gradients."""
        shares = self.shares()
        return len(shares) if shares is not None else len(self.actors)

    # -- kept between runs ------------------------------------------------------------------

    def keep(self, actors: Mapping[str, Any], cfg: ExperimentConfig) -> None:
        """Hold (and own) a finished run's actors, started or reset for ``cfg``, to lend them to the
        next run."""
        self.actors, self.owned, self._fits = dict(actors), True, _fit(cfg)

    def lend(self, cfg: ExperimentConfig) -> dict[str, Any] | None:
        """Held actors for ``MetaTrainer(cfg, actors=...)``, which resets them: the ones kept for
        the same actors and resources. None when they do not fit (they are ended: the trainer starts
        its own). A pool with fixed ``options`` lends to any configuration, and starts the keys it
        lacks."""
        if self._options is not None:
            import ray

            remote = ray.remote(TaskActor).options(**self._options)
            for name, ks in actor_keys(cfg).items():
                for r, key in enumerate(ks):
                    if key not in self.actors:
                        self.actors[key] = remote.remote(cfg.model_dump_json(), name, self._threads,
                                                         self._device, r)
            return {k: self.actors[k] for ks in actor_keys(cfg).values() for k in ks}
        if self.actors and self._fits == _fit(cfg):
            return dict(self.actors)
        self.release()
        return None
