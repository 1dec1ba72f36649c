"""How a meta-step's task gradients become one outer step: ``meta.reduce`` in its two forms, behind
one interface.

:class:`DriverReduce` (``reduce: driver``): the driver publishes the parameters once (one
``ray.put``), every actor returns its task gradient, the driver reduces Σ wᵢ gᵢ
(:func:`~raymeta.core.combine.reduce_gradients`: PCGrad, task affinity) and takes the outer step on
its own copy.

:class:`CollectiveReduce` (``reduce: collective``): the actors form a process group
(:mod:`raymeta.train.collective`), all-reduce the weighted gradients among themselves and each
applies the same outer step, so the parameters and the optimizer state live on the actors; the
driver's copy is current only after :meth:`~CollectiveReduce.pull` (rank 0's, for a checkpoint or an
export), and a restored one reaches the actors with :meth:`~CollectiveReduce.push`.

Both forms take the same outer step (:func:`~raymeta.core.optim.outer_step`) and apply the same
``meta.nan_policy`` (:func:`~raymeta.core.combine.non_finite_policy`), so they reach the same
parameters (tests/integration/test_trainer.py). Replicas of a task keep identical heads through
:class:`~raymeta.train.state.ReplicaHeads` in either form. Each form reads and writes the step's
state (:class:`~raymeta.train.state.StepState`) and calls the actors of
:class:`~raymeta.train.state.Workers`; neither sees the trainer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..cluster import get
from ..config import ExperimentConfig
from ..core.combine import (
    RunningReduce,
    TaskGrad,
    mean_of_partials,
    non_finite_policy,
    reduce_gradients,
)
from ..core.optim import optimizer_from_tensors, optimizer_tensors, outer_step
from ..core.reduce_choice import A100, default_reduce
from ..core.weighting import alignment_cosines
from .actor import from_wire
from .record import StepRecord
from .state import StepState, Workers
from .worker import worker_of

__all__ = ["Reducer", "DriverReduce", "CollectiveReduce", "choose_reduce", "reducer_for"]

log = logging.getLogger("raymeta.train")


class Reducer:
    """One outer step of the trainer, and where its parameters live. The base is the driver form's
    no-ops."""

    collective = False
    overlap = False  # meta.overlap: the exchange hidden behind the compute (each form says how)
    # reduce: driver: the last (clipped) meta-gradient, for checks
    last_meta_grad: torch.Tensor | None = None

    def set_overlap(self, w: Workers, overlap: bool) -> None:
        """``meta.overlap`` from the next step on (``raymeta speed`` times both on one set of
        actors)."""
        self.overlap = overlap

    def join(self, s: StepState, w: Workers) -> None:
        """After the actors start (or restart): whatever the form needs of them before the first
        step."""

    def step(self, s: StepState, w: Workers) -> StepRecord:
        raise NotImplementedError

    def pull(self, s: StepState, w: Workers) -> None:
        """Make the driver's parameters and optimizer the current ones (before a checkpoint or an
        export)."""

    def push(self, s: StepState, w: Workers) -> None:
        """After the driver restored a checkpoint: every process that steps continues from it."""


class DriverReduce(Reducer):
    """``reduce: driver``: publish, gather every task gradient, reduce and step on the driver.

    With ``meta.overlap`` (``overlap``) each gradient is added as soon as it and every earlier one
    (task order) have arrived (:class:`~raymeta.core.combine.RunningReduce`: the same sum, bit for
    bit), so the reduction of all but the last arrivals hides behind the slower actors; ``reduce_s``
    is then only what is left after the last one."""

    def __init__(self, overlap: bool = True):
        self.overlap = overlap

    def step(self, s: StepState, w: Workers) -> StepRecord:
        import ray

        cfg = s.cfg
        t0 = time.perf_counter()
        ref = ray.put(s.flat.numpy())  # publish once: every actor reads the same object
        t_pub = time.perf_counter()
        shares = w.pool.shares()
        # every actor, or this step's meta-batch (meta.task_batch), spread evenly over the workers
        batch = s.step_batch(shares)
        if shares is not None and cfg.meta.combine == "mean" and w.targets is None:
            return self._reduced_on_workers(s, w, ref, batch, t0, t_pub)
        actors = {k: a for k, a in w.actors.items() if k in batch}
        refs = [a.compute.remote(ref, s.step, w.heads.pending.get(k)) for k, a in actors.items()]
        target_refs = w.targets.launch(ref, s.step) if w.targets is not None else None
        opts = dict(step=s.step, seed=cfg.seed, rule=cfg.meta.combine,
                    nan_policy=cfg.meta.nan_policy, out=s.grad_buf)
        if self.overlap:
            running = RunningReduce([(k, batch[k]) for k in actors], s.layout.numel, **opts)
            results, t_got = self._as_they_arrive(refs, running)
        else:
            results = get(refs)
            t_got = time.perf_counter()
        w.heads.average(results)
        del ref  # no per-step reference outlives the step
        reduced = running.result() if self.overlap else reduce_gradients(
            [TaskGrad(r["task"], from_wire(r["grad"]), r["loss"], batch[r["task"]])
             for r in results],
            s.layout.numel, **opts)
        t_red = time.perf_counter()
        alignment = target_loss = None
        # cos(gᵢ, g_target) at this step's parameters, before the outer step
        if target_refs is not None:
            g_target, target_loss = w.targets.gradient(target_refs)
            alignment = alignment_cosines({r["task"]: from_wire(r["grad"]) for r in results},
                                          g_target)
        norm, lr = outer_step(s.named, reduced.grad, s.opt, s.sched, cfg.optim.max_grad_norm)
        t_end = time.perf_counter()
        self.last_meta_grad = reduced.grad
        return StepRecord(
            step=s.step, steps=cfg.meta.steps, loss={r["task"]: r["loss"] for r in results},
            metrics={r["task"]: r["metrics"] for r in results}, weights=reduced.weights,
                          skipped=reduced.skipped,
            grad_norm=norm, lr=lr, step_s=t_end - t0, publish_s=t_pub - t0, wait_s=t_got - t_pub,
                          reduce_s=t_red - t_got,
            outer_s=t_end - t_red, compute_max_s=max(r["compute_s"] for r in results),
            compute_s={r["task"]: r["compute_s"] for r in results},
            # what `raymeta speed` splits the wait into, and the bytes each actor reads and returns
            load_s={r["task"]: r["load_s"] for r in results}, publish_bytes=s.layout.nbytes,
            grad_bytes={r["task"]: int(r["grad"].nbytes) for r in results},
            used=reduced.used, cosine=reduced.cosine, alignment=alignment, target_loss=target_loss,
            tasks=s.drawn(batch),
        )


    def _reduced_on_workers(self, s: StepState, w: Workers, ref: Any, batch: dict[str, float],
                            t0: float, t_pub: float) -> StepRecord:
        """``resources.workers``: each worker sums its share of the step's tasks
        (:meth:`~raymeta.train.worker.TaskWorker.compute_sum`), and the driver takes the mean of
        the W partial sums (:func:`~raymeta.core.combine.mean_of_partials`); no task affinity."""
        cfg = s.cfg
        shares: dict[int, tuple[Any, list[tuple[str, float, Any]]]] = {}
        for key, weight in batch.items():  # task order within each worker
            worker = worker_of(w.actors[key])
            shares.setdefault(id(worker), (worker, []))[1].append(
                (key, weight, w.heads.pending.get(key)))
        outs = get([worker.compute_sum.remote(ref, s.step, tasks)
                    for worker, tasks in shares.values()])
        t_got = time.perf_counter()
        del ref
        order = {k: i for i, k in enumerate(batch)}
        results = sorted((r for o in outs for r in o["tasks"]), key=lambda r: order[r["task"]])
        w.heads.average(results)
        bad = {r["task"]: "loss" if not np.isfinite(r["loss"]) else "gradient" for r in results
               if not r["finite"]}
        skipped = non_finite_policy(bad, len(results), s.step, cfg.meta.nan_policy)
        grad = mean_of_partials([(o["grad"], o["weight"]) for o in outs], s.grad_buf)
        total = sum(o["weight"] for o in outs)
        t_red = time.perf_counter()
        norm, lr = outer_step(s.named, grad, s.opt, s.sched, cfg.optim.max_grad_norm)
        t_end = time.perf_counter()
        self.last_meta_grad = grad
        used = [r["task"] for r in results if r["task"] not in bad]
        return StepRecord(
            step=s.step, steps=cfg.meta.steps, loss={r["task"]: r["loss"] for r in results},
            metrics={r["task"]: r["metrics"] for r in results},
            weights={k: batch[k] / total for k in used}, skipped=skipped, grad_norm=norm, lr=lr,
            step_s=t_end - t0, publish_s=t_pub - t0, wait_s=t_got - t_pub, reduce_s=t_red - t_got,
            outer_s=t_end - t_red, compute_max_s=max(r["compute_s"] for r in results),
            compute_s={r["task"]: r["compute_s"] for r in results},
            load_s={r["task"]: r["load_s"] for r in results}, publish_bytes=s.layout.nbytes,
            grad_bytes={tasks[0][0]: int(o["grad"].nbytes) for (_, tasks), o in
                        zip(shares.values(), outs)},
            used=used, tasks=s.drawn(batch))

    @staticmethod
    def _as_they_arrive(refs: list[Any], running: RunningReduce) -> tuple[list[dict[str, Any]],
                                                                          float]:
        """Every actor's result, in task order, and when the last one arrived. Each gradient goes
        into ``running`` as soon as it and every earlier one have arrived (``ray.wait``); what is
        still to add when the last arrives is the step's serial reduction (``reduce_s`` counts from
        that moment)."""
        import ray

        index = {r: i for i, r in enumerate(refs)}
        arrived: dict[int, dict[str, Any]] = {}
        pending, nxt, last = list(refs), 0, time.perf_counter()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            # and whatever else is ready now: results arriving together are reduced in one pass
            if pending:
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                done += more
            try:
                arrived.update({index[r]: v for r, v in zip(done, ray.get(done))})
            except ray.exceptions.RayError:
                get(refs)  # every call's error read, a user error re-raised as itself (cluster.get)
                raise
            last = time.perf_counter()
            ready = []
            while nxt in arrived:
                ready.append((from_wire(arrived[nxt]["grad"]), arrived[nxt]["loss"]))
                nxt += 1
            if ready:
                running.add_many(ready)
        return [arrived[i] for i in range(len(refs))], last


class CollectiveReduce(Reducer):
    """``reduce: collective``: the actors all-reduce and step themselves; the driver collects their
    metrics. No process holds every task's gradient, so there is no task affinity (and no
    PCGrad)."""

    collective = True

    def __init__(self, overlap: bool = True):
        self.overlap = overlap

    def set_overlap(self, w: Workers, overlap: bool) -> None:
        import ray

        self.overlap = overlap
        ray.get([a.set_overlap.remote(overlap) for a in w.actors.values()])

    def join(self, s: StepState, w: Workers) -> None:
        """The actors form a process group and start from the driver's parameters."""
        import ray

        addr, port = ray.get(next(iter(w.actors.values())).rendezvous.remote())
        ref = ray.put(s.flat.numpy())
        tasks, weights = list(s.actor_weights), list(s.actor_weights.values())
        ray.get([a.join_group.remote(rank, tasks, weights, addr, port, ref, self.overlap)
                 for rank, a in enumerate(w.actors.values())])
        log.info("reduce: collective: %d actors in a process group at %s:%d", len(tasks), addr,
                 port)

    def step(self, s: StepState, w: Workers) -> StepRecord:
        t0 = time.perf_counter()
        targets = weights = None
        # rank 0's parameters (this step's: its calls run in order) to the target actors;
        if w.targets is not None:
            # each rank reads g_target when it needs it
            shared = next(iter(w.actors.values())).get_shared.remote()
            targets, weights = w.targets.launch(shared, s.step), list(s.actor_weights.values())
        batch = s.step_batch()
        if batch is not s.actor_weights:  # meta.task_batch: ranks not drawn add a zero gradient
            weights = [batch.get(k, 0.0) for k in w.actors]
        results = get([a.collective_step.remote(s.step, w.heads.pending.get(k), targets, weights,
                                                k in batch)
                       for k, a in w.actors.items()])
        results = [r for r in results if r["task"] in batch]
        target_loss = w.targets.gradient(targets)[1] if targets is not None else None
        w.heads.average(results)
        r0 = results[0]
        # every rank applied meta.nan_policy already (an abort raised there); the skipped tasks are
        # logged once, here
        non_finite_policy({k: "loss or gradient" for k in r0["skipped"]}, len(results), s.step,
                          s.cfg.meta.nan_policy)
        return StepRecord(
            step=s.step, steps=s.cfg.meta.steps, loss={r["task"]: r["loss"] for r in results},
            metrics={r["task"]: r["metrics"] for r in results},
            weights={r["task"]: r["weight"] for r in results if r["finite"]}, skipped=r0["skipped"],
            grad_norm=r0["grad_norm"], lr=r0["lr"], step_s=time.perf_counter() - t0,
            allreduce_s=max(r["allreduce_s"] for r in results),
                          outer_s=max(r["outer_s"] for r in results),
            compute_max_s=max(r["compute_s"] for r in results),
                          compute_s={r["task"]: r["compute_s"] for r in results},
            used=[r["task"] for r in results if r["finite"]],
            alignment={r["task"]: r["alignment"] for r in results} if targets is not None else None,
            target_loss=target_loss, tasks=s.drawn(batch),
        )

    def pull(self, s: StepState, w: Workers) -> None:
        """The driver's copy of the parameters and optimizer: rank 0's."""
        import ray

        rank0 = next(iter(w.actors.values()))
        shared, state = ray.get([rank0.get_shared.remote(), rank0.get_outer_state.remote()])
        np.copyto(s.flat.numpy(), shared)
        optimizer_from_tensors(s.opt, {k: torch.from_numpy(np.array(v)) for k,
                                       v in state["tensors"].items()},
                               state["param_groups"])
        s.sched.load_state_dict(state["scheduler"])

    def push(self, s: StepState, w: Workers) -> None:
        """Every rank continues from the driver's (restored) parameters and optimizer."""
        import ray

        tensors, groups = optimizer_tensors(s.opt)
        state = {"tensors": {k: v.numpy() for k, v in tensors.items()}, "param_groups": groups,
                 "scheduler": s.sched.state_dict()}
        ref = ray.put(s.flat.numpy())
        ray.get([a.set_outer_state.remote(ref, state) for a in w.actors.values()])


def reducer_for(cfg: ExperimentConfig, mode: str) -> Reducer:
    """The form of ``mode`` (``meta.reduce``, resolved when it is ``auto``), with
    ``meta.overlap``."""
    form = CollectiveReduce if mode == "collective" else DriverReduce
    return form(cfg.meta.overlap)


def choose_reduce(s: StepState, w: Workers, placement: dict[str, str],
                  resumed: Path | None) -> tuple[str, str]:
    """``meta.reduce: auto``: the form the cost model
    (:func:`raymeta.core.reduce_choice.default_reduce`) says is faster for these actors, this many
    trainable parameters and where they run, and why. The run it resumes (``resumed``, a checkpoint
    whose config.yaml chose a form already) keeps its form."""
    import ray

    if w.pool.shares() is not None:
        return "driver", "resources.workers: a worker computes several tasks"
    saved = resumed / "config.yaml" if resumed is not None else None
    if saved is not None and saved.is_file():
        mode = ((yaml.safe_load(saved.read_text()) or {}).get("meta") or {}).get("reduce")
        if mode in ("driver", "collective"):
            return mode, "the form of the run this one resumes"
    cfg = s.cfg
    nodes = set(placement.values()) | {ray.util.get_node_ip_address()}
    episode = cfg.meta.episode
    seqs = episode.ways * (episode.shots + episode.queries)
    tokens = seqs * max(t.max_length for t in cfg.tasks)
    gpus = "cuda" in w.pool.devices.values()  # then A100-class compute at 40% MFU (its default GPU)
    return default_reduce(len(s.actor_weights), s.layout.numel,
                          sum(p.numel() for p in s.encoder.parameters()), tokens,
                          local=len(nodes) == 1, combine=cfg.meta.combine,
                          device=A100 if gpus else None)
