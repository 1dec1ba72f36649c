"""The outer optimizer and its step, shared by the driver (reduce: driver), every actor (reduce:
collective) and the speed baselines (:mod:`raymeta.speed.baselines`), so every mode takes exactly
the same step."""

from __future__ import annotations

import math
from typing import Mapping

import torch

from ..config import ExperimentConfig

__all__ = ["outer_optimizer", "outer_step", "optimizer_tensors", "optimizer_from_tensors"]


def outer_optimizer(named: dict[str, torch.nn.Parameter], cfg: ExperimentConfig):
    """AdamW (no decay on biases and LayerNorm), linear warm-up then cosine/linear/constant."""
    o = cfg.optim
    no_decay = [p for n,
                p in named.items() if n.endswith("bias") or "LayerNorm" in n or "layernorm" in n
                or "ln_" in n]
    ids = {id(p) for p in no_decay}
    groups = [{"params": [p for p in named.values() if id(p) not in ids],
               "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step over every tensor instead of ~10 elementwise passes per tensor:
    # MiniLM's
    # 22.6M parameters step in 11-16 ms instead of 88-103 ms on 2 CPUs (benchmarks/driver_ops.py,
    # benchmarks/results/throughput.md#optimisations-before-and-after)
    fused = all(p.dtype in (torch.float32, torch.float16,
                            torch.bfloat16) and p.device.type in ("cpu", "cuda")
                for p in named.values())
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, fused=fused)
    total = cfg.meta.steps

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        if o.schedule == "constant":
            return 1.0
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return (max(0.0, 1 - progress) if o.schedule == "linear"
                else 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def outer_step(params: Mapping[str, torch.nn.Parameter], grad: torch.Tensor | None,
               opt: torch.optim.Optimizer,
               sched: torch.optim.lr_scheduler.LRScheduler,
               max_grad_norm: float | None) -> tuple[float, float]:
    """One outer step: ``.grad`` of every parameter becomes a view of the flat meta-gradient
    ``grad`` (in the order and shapes of ``params``; None: ``.grad`` is set already, by DDP's
    backward), the gradient is clipped in place to ``max_grad_norm`` (None or 0: not clipped, the
    norm is still measured), then AdamW and the schedule step and ``.grad`` is dropped. ``grad``
    keeps the clipped values. Returns (pre-clipping gradient norm, the step's lr)."""
    ps = list(params.values())
    if grad is not None:
        if grad.dim() != 1 or grad.numel() != sum(p.numel() for p in ps):
            raise ValueError(f"meta-gradient of shape {tuple(grad.shape)} does not match the "
                             f"{sum(p.numel() for p in ps)} values of the parameters it steps")
        offset = 0
        for p in ps:
            p.grad = grad[offset: offset + p.numel()].view(p.shape)
            offset += p.numel()
    norm = torch.nn.utils.clip_grad_norm_(ps, max_grad_norm if max_grad_norm else float("inf"))
    lr = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(norm), lr


def optimizer_tensors(opt: torch.optim.Optimizer,
                      prefix: str = "optim.") -> tuple[dict[str, torch.Tensor], list]:
    """An optimizer's state as named tensors (for safetensors) plus its JSON-able param groups."""
    sd = opt.state_dict()
    tensors = {f"{prefix}{idx}.{key}": torch.as_tensor(val) for idx,
               st in sd["state"].items() for key, val in st.items()}
    return tensors, sd["param_groups"]


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           param_groups: list,
                           prefix: str = "optim.") -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = torch.as_tensor(val)
    opt.load_state_dict({"state": state, "param_groups": param_groups})
