"""Task weights learned during meta-training, from how well each task's gradient agrees with the
gradient of held-out target tasks (``meta.weighting.rule: alignment``).

Every ``every_steps`` the log-weights move by the cosine between each task's gradient gᵢ and the
target gradient:

    zᵢ ← zᵢ + η · cos(gᵢ, g_target),    w = (1 − ε) · softmax(z + log w_config) + ε / N

META-TARTAN's update of the task logits (Dery et al., ICLR 2022, "Should We Be Pre-training? An
Argument for End-task Aware Training as an Alternative"), mixed with ε-uniform as DoReMi mixes its
weights (Xie et al., NeurIPS 2023), so no task's weight falls below ε / N. A task whose gradient
points away from the target's loses weight at every update; gating an auxiliary task by that cosine
keeps training on the target's descent directions (Du et al. 2018, "Adapting Auxiliary Losses Using
Gradient Similarity"), which is the do-no-harm argument for it.

The accumulated log-weights grow without bound while one task's cosine stays ahead, so the raw
softmax collapses onto that task and flips to another when the order changes
(benchmarks/results/learned-weights.md#stability: 0.99 on one task within 7 steps). So the mixture
is the best one within a KL ball around the configured mixture:

    w = argmax_w Σ wᵢ zᵢ  subject to  KL(w ‖ w_config) ≤ B   ⇒   w ∝ w_config · exp(z / λ)

with λ ≥ 1 the smallest temperature that meets the bound (λ = 1, the formula above, while it
holds). This is the KL-constrained form of the exponentiated-gradient step that DoReMi takes (Xie
et al. 2023), and the solution of the Lagrangian is the tempered Gibbs distribution (as in relative
entropy policy search, Peters et al. 2010). With the configured mixture uniform, KL(w ‖ u) = log N −
H(w), so B is an entropy floor: H(w) ≥ log N − B. Near a change in the order of two tasks' z the
tempered weights of both are close, so the mixture moves across smoothly instead of flipping.

Pure numpy/torch, no ray: the trainer holds one :class:`AlignmentWeights` and feeds it each step's
cosines.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .combine import as_tensor

__all__ = ["AlignmentWeights", "alignment_cosines", "mean_target", "entropy", "kl_divergence"]


def alignment_cosines(grads: Mapping[str, np.ndarray | torch.Tensor], target: torch.Tensor,
                      chunk: int = 1 << 20) -> dict[str, float]:
    """cos(gᵢ, g_target) for each task gradient, in one chunked pass over each (the target's chunk
    stays in cache). A non-finite gradient, or a zero one, gets NaN: :meth:`AlignmentWeights.update`
    leaves its weight alone."""
    target = target.float()
    tn = float(target.double().norm())
    out: dict[str, float] = {}
    for name, g in grads.items():
        g = as_tensor(g)
        dot = norm = 0.0
        for a in range(0, target.numel(), chunk):
            x = g[a:a + chunk].float()
            dot += float(torch.dot(x, target[a:a + chunk]))
            norm += float(torch.dot(x, x))
        out[name] = (dot / (math.sqrt(norm) * tn)
                     if norm > 0 and tn > 0 and math.isfinite(dot) else math.nan)
    return out


def mean_target(results: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """g_target: the mean of the target tasks' flat gradients (their ``"grad"``), summed in their
    order."""
    g = torch.zeros(len(results[0]["grad"]), dtype=torch.float32)
    for r in results:
        g.add_(as_tensor(np.asarray(r["grad"], dtype=np.float32)), alpha=1.0 / len(results))
    return g


def entropy(w: Sequence[float] | np.ndarray) -> float:
    """H(w) in nats (0 · log 0 = 0)."""
    p = np.asarray(w, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def kl_divergence(w: Sequence[float] | np.ndarray, base: Sequence[float] | np.ndarray) -> float:
    """KL(w ‖ base) in nats."""
    p, q = np.asarray(w, dtype=np.float64), np.asarray(base, dtype=np.float64)
    m = p > 0
    return float((p[m] * (np.log(p[m]) - np.log(q[m]))).sum())


class AlignmentWeights:
    """The mixture of one run under ``meta.weighting.rule: alignment``: the log-weights ``z`` (the
    state a checkpoint carries), the configured mixture ``base`` (normalised), the step size η
    (``lr``), the floor ε and the KL bound B (``max_kl``; None: no bound, the raw softmax)."""

    def __init__(self, base: Mapping[str, float], lr: float, floor: float, every_steps: int = 1,
                 max_kl: float | None = None):
        n = len(base)
        if not 0.0 <= floor <= 1.0 / n:
            raise ValueError(f"floor {floor} outside [0, 1/N] = [0, {1.0 / n:.6g}]")
        total = sum(base.values())
        self.tasks = list(base)
        self.log_base = np.log(np.array([base[t] / total for t in self.tasks], dtype=np.float64))
        self.lr, self.floor, self.every_steps = float(lr), float(floor), int(every_steps)
        if max_kl is not None and max_kl < 0:
            raise ValueError(f"max_kl {max_kl} is negative")
        self.max_kl = None if max_kl is None else float(max_kl)
        self.z = np.zeros(n, dtype=np.float64)
        self.temperature = 1.0  # λ of the last weights(): 1 while the KL bound holds untempered

    def _mix(self, inv_temperature: float) -> np.ndarray:
        """(1 − ε) · softmax(z / λ + log w_config) + ε / N."""
        logits = self.z * inv_temperature + self.log_base
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return (1.0 - self.floor) * p + self.floor / len(self.tasks)

    def weights(self) -> dict[str, float]:
        """w = (1 − ε) · softmax(z / λ + log w_config) + ε / N, λ = 1 unless KL(w ‖ w_config)
        would exceed ``max_kl``; then the smallest λ that meets it (bisection on 1/λ: the KL of the
        tempered family grows with 1/λ)."""
        w, self.temperature = self._mix(1.0), 1.0
        base = np.exp(self.log_base)
        if self.max_kl is not None and kl_divergence(w, base) > self.max_kl:
            lo, hi = 0.0, 1.0  # 1/λ: KL(lo) ≤ B < KL(hi)
            if kl_divergence(self._mix(0.0), base) > self.max_kl:
                hi = 0.0  # ε alone moves w beyond B (a skewed w_config): as close as it gets
            for _ in range(60):
                if hi == 0.0:
                    break
                mid = 0.5 * (lo + hi)
                if kl_divergence(self._mix(mid), base) > self.max_kl:
                    hi = mid
                else:
                    lo = mid
            w = self._mix(lo)
            self.temperature = math.inf if lo == 0.0 else 1.0 / lo
        return dict(zip(self.tasks, (float(x) for x in w)))

    def due(self, step: int) -> bool:
        """Whether the cosines of ``step`` (0-based) update z: every ``every_steps`` steps."""
        return (step + 1) % self.every_steps == 0

    def update(self, cosines: Mapping[str, float]) -> None:
        """zᵢ ← zᵢ + η · cos(gᵢ, g_target); a task without a finite cosine this step (skipped, or
        not computed) keeps its zᵢ."""
        for i, t in enumerate(self.tasks):
            c = cosines.get(t, math.nan)
            if math.isfinite(c):
                self.z[i] += self.lr * c

    def state(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "z": [float(x) for x in self.z]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """z from a checkpoint (:meth:`state`), for the same tasks in the same order."""
        tasks: Sequence[str] = state["tasks"]
        if list(tasks) != self.tasks:
            raise ValueError(f"task weights of tasks {list(tasks)} cannot resume a run of tasks "
                             f"{self.tasks}")
        self.z = np.array(state["z"], dtype=np.float64)
