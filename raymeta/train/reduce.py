"""How a meta-step's task gradients become one outer step: ``meta.reduce`` in its two forms, behind one interface.

:class:`DriverReduce` (``reduce: driver``): the driver publishes the parameters once (one ``ray.put``), every actor
returns its task gradient, the driver reduces Σ wᵢ gᵢ (:func:`~raymeta.core.combine.reduce_gradients`: PCGrad, task
affinity) and takes the outer step on its own copy.

:class:`CollectiveReduce` (``reduce: collective``): the actors form a process group (:mod:`raymeta.train.collective`),
all-reduce the weighted gradients among themselves and each applies the same outer step, so the parameters and the
optimizer state live on the actors; the driver's copy is current only after :meth:`~CollectiveReduce.pull` (rank 0's,
for a checkpoint or an export), and a restored one reaches the actors with :meth:`~CollectiveReduce.push`.

Both forms take the same outer step (:func:`~raymeta.core.optim.outer_step`) and apply the same ``meta.nan_policy``
(:func:`~raymeta.core.combine.non_finite_policy`), so they reach the same parameters (tests/integration/test_trainer.py).
Replicas of a task keep identical heads through :class:`ReplicaHeads` in either form.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import numpy as np
import torch

from ..config import ExperimentConfig
from ..core.combine import RunningReduce, TaskGrad, non_finite_policy, reduce_gradients
from ..core.model import ParamLayout
from ..core.optim import optimizer_from_tensors, optimizer_tensors, outer_step
from ..core.weighting import alignment_cosines
from ..runtime import get
from .actor import from_wire
from .record import StepRecord

__all__ = ["Driver", "Reducer", "DriverReduce", "CollectiveReduce", "ReplicaHeads", "reducer_for"]

log = logging.getLogger("raymeta.train")


class Driver(Protocol):
    """What a reducer reads and writes of the trainer (:class:`~raymeta.train.trainer.MetaTrainer`)."""

    cfg: ExperimentConfig
    step: int  # the step being taken (steps done before it)
    actors: dict[str, Any]  # actor key -> TaskActor handle, in task order
    actor_weights: dict[str, float]  # actor key -> its mixture weight (a task's weight / its replicas)
    layout: ParamLayout
    flat: torch.Tensor  # the driver's parameters, one flat buffer every shared parameter views
    grad_buf: torch.Tensor  # the meta-gradient's buffer (reduce: driver)
    named: dict[str, torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: Any
    heads: ReplicaHeads
    targets: Any  # meta.weighting.rule alignment: the target tasks' actors (raymeta.train.targets), else None


class ReplicaHeads:
    """Replicas of a task keep identical heads: each step their finite head gradients are averaged here and the
    average goes to every replica with its next call (or :meth:`flush`), instead of each replica stepping alone."""

    def __init__(self, replicas_of: dict[str, list[str]]):
        self.replicas_of = replicas_of
        self.pending: dict[str, np.ndarray] = {}

    def average(self, results: list[dict[str, Any]]) -> None:
        self.pending = {}
        by_key = {r["task"]: r for r in results}
        for keys in self.replicas_of.values():
            grads = [by_key[k]["head_grad"] for k in keys if by_key[k].get("head_grad") is not None]
            if len(keys) > 1 and grads:
                avg = np.mean(np.stack(grads), axis=0, dtype=np.float64).astype(np.float32)
                self.pending.update({k: avg for k in keys})

    def flush(self, actors: dict[str, Any]) -> None:
        """Apply the pending head updates now, so a checkpoint holds the heads of this step."""
        if self.pending:
            get([actors[k].apply_head.remote(g) for k, g in self.pending.items()])
            self.pending = {}


class Reducer:
    """One outer step of the trainer, and where its parameters live. The base is the driver form's no-ops."""

    collective = False
    overlap = False  # meta.overlap: the exchange hidden behind the compute (each form says how)
    last_meta_grad: torch.Tensor | None = None  # reduce: driver: the last (clipped) meta-gradient, for checks

    def set_overlap(self, t: Driver, overlap: bool) -> None:
        """``meta.overlap`` from the next step on (``raymeta speed`` times both on one set of actors)."""
        self.overlap = overlap

    def join(self, t: Driver) -> None:
        """After the actors start (or restart): whatever the form needs of them before the first step."""

    def step(self, t: Driver) -> StepRecord:
        raise NotImplementedError

    def pull(self, t: Driver) -> None:
        """Make the driver's parameters and optimizer the current ones (before a checkpoint or an export)."""

    def push(self, t: Driver) -> None:
        """After the driver restored a checkpoint: every process that steps continues from it."""


class DriverReduce(Reducer):
    """``reduce: driver``: publish, gather every task gradient, reduce and step on the driver.

    With ``meta.overlap`` (``overlap``) each gradient is added as soon as it and every earlier one (task order) have
    arrived (:class:`~raymeta.core.combine.RunningReduce`: the same sum, bit for bit), so the reduction of all but
    the last arrivals hides behind the slower actors; ``reduce_s`` is then only what is left after the last one."""

    def __init__(self, overlap: bool = True):
        self.overlap = overlap

    def step(self, t: Driver) -> StepRecord:
        import ray

        cfg = t.cfg
        t0 = time.perf_counter()
        ref = ray.put(t.flat.numpy())  # publish once: every actor reads the same object
        t_pub = time.perf_counter()
        refs = [a.compute.remote(ref, t.step, t.heads.pending.get(k)) for k, a in t.actors.items()]
        target_refs = t.targets.launch(ref, t.step) if t.targets is not None else None
        opts = dict(step=t.step, seed=cfg.seed, rule=cfg.meta.combine, nan_policy=cfg.meta.nan_policy, out=t.grad_buf)
        if self.overlap:
            running = RunningReduce([(k, t.actor_weights[k]) for k in t.actors], t.layout.numel, **opts)
            results, t_got = self._as_they_arrive(refs, running)
        else:
            results = get(refs)
            t_got = time.perf_counter()
        t.heads.average(results)
        del ref  # no per-step reference outlives the step
        reduced = running.result() if self.overlap else reduce_gradients(
            [TaskGrad(r["task"], from_wire(r["grad"]), r["loss"], t.actor_weights[r["task"]]) for r in results],
            t.layout.numel, **opts)
        t_red = time.perf_counter()
        alignment = target_loss = None
        if target_refs is not None:  # cos(gᵢ, g_target) at this step's parameters, before the outer step
            g_target, target_loss = t.targets.gradient(target_refs)
            alignment = alignment_cosines({r["task"]: from_wire(r["grad"]) for r in results}, g_target)
        norm, lr = outer_step(t.named, reduced.grad, t.opt, t.sched, cfg.optim.max_grad_norm)
        t_end = time.perf_counter()
        self.last_meta_grad = reduced.grad
        return StepRecord(
            step=t.step, steps=cfg.meta.steps, loss={r["task"]: r["loss"] for r in results},
            metrics={r["task"]: r["metrics"] for r in results}, weights=reduced.weights, skipped=reduced.skipped,
            grad_norm=norm, lr=lr, step_s=t_end - t0, publish_s=t_pub - t0, wait_s=t_got - t_pub, reduce_s=t_red - t_got,
            outer_s=t_end - t_red, compute_max_s=max(r["compute_s"] for r in results),
            compute_s={r["task"]: r["compute_s"] for r in results},
            # what `raymeta speed` splits the wait into, and the bytes each actor reads and returns
            load_s={r["task"]: r["load_s"] for r in results}, publish_bytes=t.layout.nbytes,
            grad_bytes={r["task"]: int(r["grad"].nbytes) for r in results},
            used=reduced.used, cosine=reduced.cosine, alignment=alignment, target_loss=target_loss,
        )


    @staticmethod
    def _as_they_arrive(refs: list[Any], running: RunningReduce) -> tuple[list[dict[str, Any]], float]:
        """Every actor's result, in task order, and when the last one arrived. Each gradient goes into ``running``
        as soon as it and every earlier one have arrived (``ray.wait``); what is still to add when the last arrives
        is the step's serial reduction (``reduce_s`` counts from that moment)."""
        import ray

        index = {r: i for i, r in enumerate(refs)}
        arrived: dict[int, dict[str, Any]] = {}
        pending, nxt, last = list(refs), 0, time.perf_counter()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            if pending:  # and whatever else is ready now: results arriving together are reduced in one pass
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                done += more
            try:
                arrived.update({index[r]: v for r, v in zip(done, ray.get(done))})
            except ray.exceptions.RayError:
                get(refs)  # every call's error read, a user error re-raised as itself (runtime.get)
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
    """``reduce: collective``: the actors all-reduce and step themselves; the driver collects their metrics. No
    process holds every task's gradient, so there is no task affinity (and no PCGrad)."""

    collective = True

    def __init__(self, overlap: bool = True):
        self.overlap = overlap

    def set_overlap(self, t: Driver, overlap: bool) -> None:
        import ray

        self.overlap = overlap
        ray.get([a.set_overlap.remote(overlap) for a in t.actors.values()])

    def join(self, t: Driver) -> None:
        """The actors form a process group and start from the driver's parameters."""
        import ray

        addr, port = ray.get(next(iter(t.actors.values())).rendezvous.remote())
        ref = ray.put(t.flat.numpy())
        tasks, weights = list(t.actor_weights), list(t.actor_weights.values())
        ray.get([a.join_group.remote(rank, tasks, weights, addr, port, ref, self.overlap)
                 for rank, a in enumerate(t.actors.values())])
        log.info("reduce: collective: %d actors in a process group at %s:%d", len(tasks), addr, port)

    def step(self, t: Driver) -> StepRecord:
        t0 = time.perf_counter()
        targets = weights = None
        if t.targets is not None:  # rank 0's parameters (this step's: its calls run in order) to the target actors;
            shared = next(iter(t.actors.values())).get_shared.remote()  # each rank reads g_target when it needs it
            targets, weights = t.targets.launch(shared, t.step), list(t.actor_weights.values())
        results = get([a.collective_step.remote(t.step, t.heads.pending.get(k), targets, weights)
                       for k, a in t.actors.items()])
        target_loss = t.targets.gradient(targets)[1] if targets is not None else None
        t.heads.average(results)
        r0 = results[0]
        # every rank applied meta.nan_policy already (an abort raised there); the skipped tasks are logged once, here
        non_finite_policy({k: "loss or gradient" for k in r0["skipped"]}, len(results), t.step, t.cfg.meta.nan_policy)
        return StepRecord(
            step=t.step, steps=t.cfg.meta.steps, loss={r["task"]: r["loss"] for r in results},
            metrics={r["task"]: r["metrics"] for r in results},
            weights={r["task"]: r["weight"] for r in results if r["finite"]}, skipped=r0["skipped"],
            grad_norm=r0["grad_norm"], lr=r0["lr"], step_s=time.perf_counter() - t0,
            allreduce_s=max(r["allreduce_s"] for r in results), outer_s=max(r["outer_s"] for r in results),
            compute_max_s=max(r["compute_s"] for r in results), compute_s={r["task"]: r["compute_s"] for r in results},
            used=[r["task"] for r in results if r["finite"]],
            alignment={r["task"]: r["alignment"] for r in results} if targets is not None else None,
            target_loss=target_loss,
        )

    def pull(self, t: Driver) -> None:
        """The driver's copy of the parameters and optimizer: rank 0's."""
        import ray

        rank0 = next(iter(t.actors.values()))
        shared, state = ray.get([rank0.get_shared.remote(), rank0.get_outer_state.remote()])
        np.copyto(t.flat.numpy(), shared)
        optimizer_from_tensors(t.opt, {k: torch.from_numpy(np.array(v)) for k, v in state["tensors"].items()},
                               state["param_groups"])
        t.sched.load_state_dict(state["scheduler"])

    def push(self, t: Driver) -> None:
        """Every rank continues from the driver's (restored) parameters and optimizer."""
        import ray

        tensors, groups = optimizer_tensors(t.opt)
        state = {"tensors": {k: v.numpy() for k, v in tensors.items()}, "param_groups": groups,
                 "scheduler": t.sched.state_dict()}
        ref = ray.put(t.flat.numpy())
        ray.get([a.set_outer_state.remote(ref, state) for a in t.actors.values()])


def reducer_for(cfg: ExperimentConfig, mode: str) -> Reducer:
    """The form of ``mode`` (``meta.reduce``, resolved when it is ``auto``), with ``meta.overlap``."""
    return CollectiveReduce(cfg.meta.overlap) if mode == "collective" else DriverReduce(cfg.meta.overlap)
