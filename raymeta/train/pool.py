"""``ActorPool``: the task actors of a run, and the ones kept between runs, in one place.

One actor per task replica, keyed ``<task>`` or ``<task>#<r>`` (:func:`~raymeta.train.actor.replica_key`). The pool
starts them (sized by ``resources.*``, or in the bundles of a Ray Tune trial's placement group), resets ones started
before to another configuration (``TaskActor.reset``), checks that they compute for the driver's layout, tells which
are lost, and ends them. The trainer holds one for its run (:class:`~raymeta.train.trainer.MetaTrainer`); Ray Tune
(one per trial process), ``raymeta benchmark`` (one per sweep) and the integration tests (one per module) hold one
to lend its actors to the next trainer: process start-up (importing torch and transformers, loading the model; on a
GPU, a CUDA context too) costs seconds per actor, a reset a fraction of that.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from ..config import ExperimentConfig
from ..core.model import ParamLayout
from ..errors import RaymetaError
from ..runtime import actor_options, bundle_options, feasible, get, kill
from .actor import TaskActor, replica_key

__all__ = ["ActorPool", "actor_keys"]

log = logging.getLogger("raymeta.train")


def actor_keys(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """Task name -> the keys of its task actors, ``<task>`` then ``<task>#<r>`` for replicas r = 1, 2, ...; a task
    with mixture weight 0 gets none."""
    return {t.name: [replica_key(t.name, r) for r in range(t.replicas)] for t in cfg.tasks if t.weight > 0}


def _fit(cfg: ExperimentConfig) -> tuple[Any, ...]:
    """What an actor started for ``cfg`` was sized for: which actors, with which resources."""
    return actor_keys(cfg), cfg.resources.model_dump(), {t.name: t.resources for t in cfg.tasks}


class ActorPool:
    """Task actors keyed like the trainer's. ``owned``: :meth:`release` ends them (not actors adopted from another
    pool: their owner ends them).

    ``options``: fixed ``ray.remote`` options for every actor :meth:`lend` starts (with ``threads`` torch threads
    on ``device``), instead of sizing them to each configuration: the test suite's actors reserve no CPU, so one
    fits any configuration and a missing key is started next to the others."""

    def __init__(self, *, options: Mapping[str, Any] | None = None, threads: int | None = None, device: str = "cpu"):
        self.actors: dict[str, Any] = {}
        self.owned = True
        self._fits: tuple[Any, ...] | None = None  # what the held actors were started (or reset) for
        self._options, self._threads, self._device = dict(options) if options is not None else None, threads, device

    # -- a run's actors ---------------------------------------------------------------------

    def start(self, cfg: ExperimentConfig, *, local: bool) -> dict[str, Any]:
        """One new actor per task replica of ``cfg`` (tasks with weight 0 get none). Inside a Ray Tune trial, actor i
        takes bundle i + 1 of the trial's placement group (bundle 0 is the trial's own); else ``resources.*`` size
        them, and per-task custom resources pin a task to a node type. ``local``: our own fixed-size instance, where
        an infeasible request fails at once."""
        import ray

        group = ray.util.get_current_placement_group()
        keys = actor_keys(cfg)
        n = sum(len(ks) for ks in keys.values())
        if group is not None:
            placed = bundle_options(group, n)
        else:
            opts, threads, device = actor_options(cfg.resources, n, local=local)
        remote, cfg_json, i = ray.remote(TaskActor), cfg.model_dump_json(), 0
        self.actors, self.owned, self._fits = {}, True, _fit(cfg)
        for name, ks in keys.items():
            for r, key in enumerate(ks):
                if group is not None:
                    task_opts, threads, device = placed[i]
                else:
                    task_opts = dict(opts)
                    if cfg.task(name).resources:
                        task_opts["resources"] = {**opts.get("resources", {}), **cfg.task(name).resources}
                        if local:
                            feasible(task_opts, f"task '{name}'")
                self.actors[key] = remote.options(**task_opts).remote(cfg_json, name, threads, device, r)
                i += 1
        return self.actors

    def adopt(self, given: Mapping[str, Any], cfg: ExperimentConfig) -> dict[str, Any]:
        """Actors started elsewhere (``MetaTrainer(actors=...)``), reset to ``cfg``; :meth:`release` leaves them to
        their owner. Every key of ``cfg`` must be among them."""
        keys = actor_keys(cfg)
        missing = [k for ks in keys.values() for k in ks if k not in given]
        if missing:
            raise RaymetaError(f"task '{missing[0]}': no actor among the ones given to reuse ({', '.join(given)})")
        self.actors, self.owned, self._fits = {k: given[k] for ks in keys.values() for k in ks}, False, _fit(cfg)
        cfg_json = cfg.model_dump_json()
        get([self.actors[k].reset.remote(cfg_json, name, r) for name, ks in keys.items() for r, k in enumerate(ks)])
        return self.actors

    def check(self, layout: ParamLayout, frozen: float) -> dict[str, str]:
        """Every actor computes for the driver's ``layout`` and loaded the same frozen weights (Σ|w| ``frozen``).
        Returns the node of each actor."""
        described = get([a.describe.remote() for a in self.actors.values()])
        for d in described:
            if d["names"] != list(layout.names) or d["shapes"] != [list(s) for s in layout.shapes]:
                raise RaymetaError(f"task '{d['task']}': its model's shared parameters differ from the driver's "
                                   f"({d['numel']} vs {layout.numel} values)")
            # Frozen parameters never travel: each process loaded them, and they must be the same weights.
            if abs(d["frozen"] - frozen) > 1e-6 * max(1.0, abs(frozen)):
                raise RaymetaError(f"task '{d['task']}': its frozen encoder weights differ from the driver's "
                                   f"(Σ|w| {d['frozen']:.6g} vs {frozen:.6g}): every node must load the same model")
            log.info("task '%s' (%s): actor pid %s on %s, %d threads, %d train rows",
                     d["task"], d["type"], d["pid"], d["node"], d["threads"], d["train_rows"])
        return {d["task"]: d["node"] for d in described}

    def lost(self, timeout_s: float = 60.0) -> list[str]:
        """Keys of the actors whose process is gone: every actor is asked for its pid."""
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
        return lost

    def release(self) -> None:
        """End the actors this pool owns, and forget every one."""
        if self.owned:
            kill(self.actors.values())
        self.actors, self._fits = {}, None

    # -- kept between runs ------------------------------------------------------------------

    def keep(self, actors: Mapping[str, Any], cfg: ExperimentConfig) -> None:
        """Hold (and own) a finished run's actors, started or reset for ``cfg``, to lend them to the next run."""
        self.actors, self.owned, self._fits = dict(actors), True, _fit(cfg)

    def lend(self, cfg: ExperimentConfig) -> dict[str, Any] | None:
        """Held actors for ``MetaTrainer(cfg, actors=...)``, which resets them: the ones kept for the same actors and
        resources. None when they do not fit (they are ended: the trainer starts its own). A pool with fixed
        ``options`` lends to any configuration, and starts the keys it lacks."""
        if self._options is not None:
            import ray

            remote = ray.remote(TaskActor).options(**self._options)
            for name, ks in actor_keys(cfg).items():
                for r, key in enumerate(ks):
                    if key not in self.actors:
                        self.actors[key] = remote.remote(cfg.model_dump_json(), name, self._threads, self._device, r)
            return {k: self.actors[k] for ks in actor_keys(cfg).values() for k in ks}
        if self.actors and self._fits == _fit(cfg):
            return dict(self.actors)
        self.release()
        return None
