"""Reduce per-task flat gradients into the meta-gradient Σ wᵢ gᵢ (or its PCGrad form).

Pure numpy/torch, no ray. The reduction order is the order of the ``results`` list (the
config's task order), so the floating-point sum is the same in every run. Shapes and
finiteness are checked first, and an error names the task that breaks them.
"""

from __future__ import annotations

import logging
import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from .errors import RaymetaError

__all__ = ["TaskGrad", "Reduced", "NonFiniteGradient", "normalise_weights", "reduce_gradients", "cosine_matrix", "pcgrad"]

log = logging.getLogger(__name__)


class NonFiniteGradient(RaymetaError):
    """A task's loss or gradient is NaN/Inf and the policy is ``abort``."""


@dataclass
class TaskGrad:
    """One task's contribution to a step: a flat float32 gradient and its loss."""

    task: str
    grad: np.ndarray | torch.Tensor
    loss: float
    weight: float


@dataclass
class Reduced:
    grad: torch.Tensor  # the meta-gradient, flat float32
    used: list[str]  # tasks that entered the sum, in order
    skipped: list[str] = field(default_factory=list)  # non-finite tasks dropped (skip_task)
    weights: dict[str, float] = field(default_factory=dict)  # renormalised over `used`
    cosine: np.ndarray | None = None  # pairwise cosine similarity of the used tasks' gradients


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Zero-copy view of a gradient; arrays from Ray's object store are read-only and only read here."""
    if isinstance(x, torch.Tensor):
        return x
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x)


def normalise_weights(weights: dict[str, float]) -> dict[str, float]:
    """wᵢ / Σ w. A zero weight means the task does not run; all-zero, negative or NaN is an error."""
    for name, w in weights.items():
        if not math.isfinite(w) or w < 0:
            raise RaymetaError(f"config key 'tasks.{name}.weight': must be a finite number >= 0 (got {w})")
    total = sum(weights.values())
    if total <= 0:
        raise RaymetaError("config key 'tasks': every task has mixture weight 0; at least one must be positive")
    return {k: v / total for k, v in weights.items() if v > 0}


def cosine_matrix(grads: Sequence[torch.Tensor]) -> np.ndarray:
    """Pairwise cosine similarity of task gradients: where tasks help or fight (task affinity).

    Pairwise dot products on the flat buffers, with no stacked copy: N(N+1)/2 passes over
    memory instead of an N x numel matrix."""
    n = len(grads)
    gram = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            gram[i, j] = gram[j, i] = float(torch.dot(grads[i], grads[j]))
    norms = np.sqrt(np.maximum(np.diag(gram), 1e-30))
    return gram / np.outer(norms, norms)


def pcgrad(grads: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Gradient surgery (Yu et al. 2020, Alg. 1): project each gᵢ off every gⱼ it conflicts with
    (gᵢ·gⱼ < 0), visiting the others in a random order drawn from ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, gi in enumerate(grads):
        g = gi.clone()
        for j in rng.permutation(len(grads)):
            if j == i:
                continue
            gj = grads[j]
            dot = torch.dot(g, gj)
            if dot < 0:
                g -= dot / torch.dot(gj, gj).clamp_min(1e-30) * gj
        out.append(g)
    return out


def reduce_gradients(
    results: Sequence[TaskGrad], numel: int, *, step: int, seed: int = 0,
    rule: Literal["mean", "pcgrad"] = "mean", nan_policy: Literal["skip_task", "abort"] = "skip_task",
    affinity: bool = True, out: torch.Tensor | None = None,
) -> Reduced:
    """The meta-gradient of one step. Weights are renormalised over the tasks that survive.

    ``out``: a reusable buffer for the result (the driver keeps one: no 90 MB allocation per step)."""
    grads: list[torch.Tensor] = []
    used: list[str] = []
    weights: list[float] = []
    skipped: list[str] = []
    for r in results:
        g = _as_tensor(r.grad)
        if g.dim() != 1 or g.numel() != numel or g.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise RaymetaError(
                f"task '{r.task}': gradient of shape {tuple(g.shape)} and dtype {g.dtype} does not match "
                f"the shared parameters ({numel},) — the task's model differs from the driver's"
            )
        # One cheap reduction instead of an elementwise mask: the sum is NaN/Inf iff an element
        # is (or the values are so large that they overflow, which is as broken).
        if not (math.isfinite(r.loss) and bool(torch.isfinite(g.sum()))):
            what = "loss" if not math.isfinite(r.loss) else "gradient"
            if nan_policy == "abort":
                raise NonFiniteGradient(f"task '{r.task}': non-finite {what} at step {step} (meta.nan_policy=abort)")
            log.warning("step %d: task '%s' has a non-finite %s; skipped this step (meta.nan_policy=skip_task)",
                        step, r.task, what)
            skipped.append(r.task)
            continue
        grads.append(g.float())
        used.append(r.task)
        weights.append(r.weight)
    if not grads:
        raise NonFiniteGradient(f"step {step}: every task's gradient is non-finite; nothing to apply")
    total = sum(weights)
    w = [x / total for x in weights]
    cos = cosine_matrix(grads) if affinity and len(grads) > 1 else None
    if rule == "pcgrad" and len(grads) > 1:
        grads = pcgrad(grads, seed=zlib.crc32(f"{seed}:{step}".encode()))
    meta = out.zero_() if out is not None else torch.zeros(numel, dtype=torch.float32)
    for wi, g in zip(w, grads):  # fixed order: deterministic floating-point sum
        meta.add_(g, alpha=wi)
    return Reduced(meta, used, skipped, dict(zip(used, w)), cos)
