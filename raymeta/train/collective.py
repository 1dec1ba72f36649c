"""``reduce: collective``: the task actors all-reduce the meta-gradient among themselves.

The actors form a ``torch.distributed`` process group — NCCL on GPUs, gloo on CPU — set up
inside the actors the way Ray Train sets up its workers (rank 0 picks a free port, every
rank joins ``tcp://<rank-0 address>:<port>``). Each actor scales its gradient by its mixture
weight, all-reduces in place and applies the same outer step to its own copy of the shared
parameters, so nothing is broadcast per step and the driver only orchestrates.

The model is not wrapped in DDP: DDP's hooks do not sync gradients produced under double
backward (second-order MAML), and the meta-gradient here is one flat buffer anyway. What DDP does
that matters, hiding the all-reduce behind the backward pass (Li et al. 2020, "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training", VLDB), is :class:`GradientBuckets`.

:class:`CollectiveMember` is the actor's side of it (a mixin of ``TaskActor``): group membership,
the collective step and the outer optimiser each rank keeps. Pure torch: the one Ray call reads
the target actors' results, when learned weights need them.
"""

from __future__ import annotations

import datetime
import socket
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..core.combine import non_finite_policy
from ..core.model import ParamLayout
from ..core.optim import optimizer_from_tensors, optimizer_tensors, outer_optimizer, outer_step
from ..core.weighting import alignment_cosines, mean_target

__all__ = ["free_port", "init_group", "destroy_group", "agree_on_finite", "allreduce_weighted",
           "GradientBuckets", "CollectiveMember"]


def free_port(host: str) -> int:
    """A port that was free on ``host`` a moment ago (the usual rendezvous race is accepted, as Ray
    Train does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_group(rank: int, world: int, addr: str, port: int, device: torch.device,
               timeout_s: float = 120.0) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank,
                            world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def agree_on_finite(finite: bool, rank: int, world: int, device: torch.device) -> torch.Tensor:
    """Every rank learns which ranks produced a finite loss and gradient (a 0/1 vector)."""
    flags = torch.zeros(world, device=device)
    flags[rank] = 1.0 if finite else 0.0
    dist.all_reduce(flags)
    return flags


def allreduce_weighted(grad: torch.Tensor, weight: float) -> torch.Tensor:
    """In place: grad <- Σ_ranks w_r g_r. A rank that must not contribute passes weight 0
    (its buffer is zeroed, not multiplied: NaN * 0 is NaN)."""
    if weight == 0:
        grad.zero_()
    else:
        grad.mul_(weight)
    dist.all_reduce(grad)
    return grad


class GradientBuckets:
    """The weighted all-reduce of one flat gradient, started bucket by bucket during the backward
    pass.

    The layout's parameters are cut into buckets of about ``bucket_bytes``, each a contiguous range
    of the flat buffer, numbered from the last parameter backwards: the order a backward pass
    produces gradients in, as DDP's buckets (Li et al. 2020). :meth:`add` is the hook the backward
    pass calls with each finished gradient (:func:`raymeta.core.algorithms.task_gradient`'s
    ``on_grad``): it copies the gradient into its bucket, and as soon as a bucket is complete it is
    scaled by this rank's weight and its asynchronous all-reduce starts. Buckets are launched
    strictly in their fixed order on every rank (a bucket that is complete before an earlier one
    waits for it), so the collectives match across ranks whatever order the hooks fire in, and the
    sum within a bucket is the backend's, the same on every run. :meth:`finish` writes zeros for the
    parameters the loss did not reach and launches what is left; :meth:`wait` returns ``Σ_ranks w_r
    g_r``."""

    def __init__(self, layout: ParamLayout, bucket_bytes: float, device: torch.device):
        self.buf = torch.zeros(layout.numel, dtype=torch.float32, device=device)
        self.views = dict(zip(layout.names, layout.unflatten(self.buf).values()))
        self.ranges: list[tuple[int, int]] = []  # bucket -> [start, end) of the flat buffer
        self.sizes: list[int] = []  # bucket -> how many parameters it holds
        self.bucket_of: dict[str, int] = {}
        end, count = layout.numel, 0
        for name, off in reversed(list(zip(layout.names, layout.offsets))):
            self.bucket_of[name] = len(self.ranges)
            count += 1
            if 4 * (end - off) >= bucket_bytes:  # float32: the bucket [off, end) is full
                self.ranges.append((off, end))
                self.sizes.append(count)
                end, count = off, 0
        if count:
            self.ranges.append((0, end))
            self.sizes.append(count)
        self.begin(1.0)

    def begin(self, weight: float) -> None:
        """A new step: this rank's weight (0: it contributes zeros)."""
        self.weight, self.missing, self.next = weight, list(self.sizes), 0
        self.works: list[dist.Work] = []
        self.arrived: set[str] = set()

    def add(self, name: str, grad: torch.Tensor) -> None:
        """One parameter's finished gradient (names outside the layout, a task head's, are not
        reduced)."""
        b = self.bucket_of.get(name)
        if b is None or name in self.arrived:
            return
        with torch.no_grad():
            self.views[name].copy_(grad)
        self.arrived.add(name)
        self.missing[b] -= 1
        self._launch_ready()

    def _launch_ready(self) -> None:
        while self.next < len(self.ranges) and self.missing[self.next] == 0:
            a, b = self.ranges[self.next]
            part = self.buf[a:b]
            if self.weight == 0:  # zeroed, not multiplied: NaN * 0 is NaN
                part.zero_()
            else:
                part.mul_(self.weight)
            self.works.append(dist.all_reduce(part, async_op=True))
            self.next += 1

    def finish(self) -> None:
        """After the backward pass: the parameters it did not reach contribute zeros; every bucket
        is launched."""
        with torch.no_grad():
            for name, b in self.bucket_of.items():
                if name not in self.arrived:
                    self.views[name].zero_()
                    self.arrived.add(name)
                    self.missing[b] -= 1
        self._launch_ready()

    def wait(self) -> torch.Tensor:
        """The all-reduced buffer, once every bucket's all-reduce has completed."""
        for w in self.works:
            w.wait()
        self.works = []
        return self.buf


class CollectiveMember:
    """``reduce: collective`` on a task actor (a mixin of ``TaskActor``, whose parameters, gradient
    buffer and layout it uses): join the group, take the collective step, hand over the outer
    state."""

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0: the address and a free port for the process group."""
        addr = self.node_ip()
        addr = "127.0.0.1" if addr == "local" else addr
        return addr, free_port(addr)

    def join_group(self, rank: int, tasks: list[str], weights: list[float], addr: str, port: int,
                   shared: np.ndarray, overlap: bool = True) -> None:
        """Join the process group and start from the driver's parameters with the driver's
        optimizer. ``overlap``: all-reduce during the backward pass (``meta.overlap``)."""
        init_group(rank, len(tasks), addr, port, self.device)
        self.rank, self.group_tasks, self.group_weights = rank, tasks, weights
        self.load_shared(shared)
        self.outer_opt, self.outer_sched = outer_optimizer(self.model.shared_named_parameters(),
                                                           self.cfg)
        self.buckets = GradientBuckets(self.layout, self.cfg.meta.bucket_mb * 2**20,
                                       self.flat.device)
        self.overlap = overlap
        self.meta_buf = self.grad_buf  # the buffer that holds the last all-reduced meta-gradient

    def set_overlap(self, overlap: bool) -> None:
        """``meta.overlap`` from the next step (``raymeta speed`` times both on one group)."""
        self.overlap = overlap

    def collective_step(self, step: int, head_grad: np.ndarray | None = None,
                        targets: list[Any] | None = None,
                        weights: list[float] | None = None, active: bool = True) -> dict[str, Any]:
        """Gradient, weighted all-reduce, then the same outer step on every rank.

        With ``meta.overlap`` the all-reduce runs bucket by bucket during the backward pass
        (:class:`GradientBuckets`), each rank weighted by its share of the whole mixture, which is
        right when every rank's loss and gradient are finite (the usual case; every rank learns it
        after the backward pass). When one is not, that result is dropped and the all-reduce runs
        again on the kept local gradients with the weights renormalised over the finite ranks,
        exactly as without overlap.

        ``meta.weighting.rule: alignment``: ``weights``, this step's mixture (one per rank), and
        ``targets``, the target actors' results (``ObjectRef``s, read here once this rank's
        gradient is done): the rank returns cos(gᵢ, g_target) of its own gradient, which no other
        process holds.

        ``active`` False (``meta.task_batch``: this rank's task was not drawn this step): no
        gradient is computed; the rank all-reduces zeros with weight 0 and takes the same outer
        step. Every rank then all-reduces the whole buffer at once (no overlap), so that the ranks'
        collective calls match."""
        self.apply_head(head_grad)
        if weights is not None:
            self.group_weights = list(weights)
        fault = self.cfg.meta.fault_injection
        # a step with an injected fault poisons the flat gradient after the backward pass: no
        # overlap there (every rank knows the fault's steps, so every rank takes the same path);
        # nor with a meta-batch, where a rank left out has no backward pass to hook
        batch = self.cfg.meta.task_batch
        sampled = batch is not None and batch < len({t.split("#")[0] for t in self.group_tasks})
        overlap = self.overlap and not (fault is not None and step in fault.steps) and not sampled
        if overlap:
            self.buckets.begin(self.group_weights[self.rank] / sum(self.group_weights))
        if active:
            out = self.gradient(step, on_grad=self.buckets.add if overlap else None)
        else:
            self.grad_buf.zero_()
            out = {"task": self.key, "step": step, "loss": float("nan"), "metrics": {},
                   "n_examples": 0, "finite": True, "t_start": time.perf_counter(),
                   "compute_s": 0.0}
        t0 = time.perf_counter()
        if overlap:
            self.buckets.finish()
        if targets is not None and active:  # the local gradient, before the all-reduce's
            import ray

            g_target = mean_target(ray.get(targets))
            out["alignment"] = alignment_cosines({"g": self.grad_buf}, g_target)["g"]
        world = len(self.group_tasks)
        flags = agree_on_finite(out["finite"], self.rank, world, self.flat.device).tolist()
        # every rank decides alike; the driver logs the skipped tasks once (raymeta.train.reduce)
        # the ranks in this step's sum: every rank, or (meta.task_batch) those with a weight
        taking_part = sum(1 for w in self.group_weights if w > 0)
        bad = non_finite_policy({t: "loss or gradient" for t, f in zip(self.group_tasks, flags)
                                 if f == 0}, taking_part, step, self.cfg.meta.nan_policy,
                                warn=False)
        total = sum(w for w, f in zip(self.group_weights, flags) if f)
        weight = self.group_weights[self.rank] / total if out["finite"] else 0.0
        if overlap:
            self.meta_buf = self.buckets.wait()
        if not overlap or bad:
            self.meta_buf = allreduce_weighted(self.grad_buf, weight)
        t_red = time.perf_counter()
        norm, lr = outer_step(self.model.shared_named_parameters(), self.meta_buf, self.outer_opt,
                              self.outer_sched, self.cfg.optim.max_grad_norm)
        out.pop("t_start")
        return {**out, "skipped": bad, "grad_norm": norm, "lr": lr, "allreduce_s": t_red - t0,
                "outer_s": time.perf_counter() - t_red, "weight": weight}

    def meta_gradient(self) -> np.ndarray:
        """The last all-reduced meta-gradient Σ wᵢ gᵢ (clipped in place when
        ``optim.max_grad_norm`` is set), for checks against a single-process reference."""
        return self.meta_buf.detach().cpu().numpy().copy()

    def get_shared(self) -> np.ndarray:
        return self.flat.detach().cpu().numpy().copy()

    def get_outer_state(self) -> dict[str, Any]:
        tensors, groups = optimizer_tensors(self.outer_opt)
        return {"tensors": {k: v.cpu().numpy() for k, v in tensors.items()},
                "param_groups": groups, "scheduler": self.outer_sched.state_dict()}

    def set_outer_state(self, shared: np.ndarray, state: dict[str, Any]) -> None:
        self.load_shared(shared)
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in state["tensors"].items()}
        optimizer_from_tensors(self.outer_opt, tensors, state["param_groups"])
        self.outer_sched.load_state_dict(state["scheduler"])

    def leave_group(self) -> None:
        destroy_group()
