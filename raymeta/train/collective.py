"""``reduce: collective``: the task actors all-reduce the meta-gradient among themselves.

The actors form a ``torch.distributed`` process group — NCCL on GPUs, gloo on CPU — set up
inside the actors the way Ray Train sets up its workers (rank 0 picks a free port, every
rank joins ``tcp://<rank-0 address>:<port>``). Each actor scales its gradient by its mixture
weight, all-reduces in place and applies the same outer step to its own copy of the shared
parameters, so nothing is broadcast per step and the driver only orchestrates.

The model is not wrapped in DDP: DDP's hooks do not sync gradients produced under double
backward (second-order MAML), and the meta-gradient here is one flat buffer anyway.
Pure torch: no ray import.
"""

from __future__ import annotations

import datetime
import socket

import torch
import torch.distributed as dist

__all__ = ["free_port", "init_group", "destroy_group", "agree_on_finite", "allreduce_weighted"]


def free_port(host: str) -> int:
    """A port that was free on ``host`` a moment ago (the usual rendezvous race is accepted, as Ray Train does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_group(rank: int, world: int, addr: str, port: int, device: torch.device, timeout_s: float = 120.0) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world,
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
