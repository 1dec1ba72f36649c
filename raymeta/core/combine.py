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
from typing import Literal, Mapping, Sequence

import numpy as np
import torch

from ..errors import RaymetaError

__all__ = ["TaskGrad", "Reduced", "NonFiniteGradient", "as_tensor", "normalise_weights",
           "non_finite_policy",
           "reduce_gradients", "RunningReduce", "cosine_matrix", "pcgrad", "add_weighted",
           "mean_of_partials"]

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


def as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Zero-copy view of a gradient; arrays from Ray's object store are read-only and only read
    here."""
    if isinstance(x, torch.Tensor):
        return x
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x)


def normalise_weights(weights: dict[str, float]) -> dict[str, float]:
    """wᵢ / Σ w. A zero weight means the task does not run; all-zero, negative or NaN is an
    error."""
    for name, w in weights.items():
        if not math.isfinite(w) or w < 0:
            raise RaymetaError(f"config key 'tasks.{name}.weight': must be a finite number >= 0 "
                               f"(got {w})")
    total = sum(weights.values())
    if total <= 0:
        raise RaymetaError("config key 'tasks': every task has mixture weight 0; at least one must "
                           "be positive")
    return {k: v / total for k, v in weights.items() if v > 0}


def non_finite_policy(bad: Mapping[str, str], n_tasks: int, step: int, policy: Literal["skip_task",
                                                                                       "abort"], *,
                      warn: bool = True) -> list[str]:
    """``meta.nan_policy`` for one step of ``n_tasks`` tasks, in both reduce forms. ``bad``: each
    task whose loss or gradient is NaN/Inf, in task order, and what of it is (``"loss"``,
    ``"gradient"``, ``"loss or gradient"``). ``abort`` raises :class:`NonFiniteGradient` naming the
    first; ``skip_task`` warns once per task (``warn``: the process that logs the step) and returns
    them, to be left out of the sum. Every task non-finite raises too: there is nothing to apply."""
    for task, what in bad.items():
        if policy == "abort":
            raise NonFiniteGradient(f"task '{task}': non-finite {what} at step {step} "
                                    "(meta.nan_policy=abort)")
        if warn:
            log.warning("step %d: task '%s' has a non-finite %s; skipped this step "
                        "(meta.nan_policy=skip_task)",
                        step, task, what)
    if n_tasks == 0 or len(bad) >= n_tasks:
        raise NonFiniteGradient(f"step {step}: every task's gradient is non-finite; nothing to "
                                "apply")
    return list(bad)


def _chunk(n_tasks: int) -> int:
    """Elements per task in one chunk of the one-pass reduction: N chunks together stay ~8 MB
    (cache-sized)."""
    return max(1 << 16, (1 << 21) // max(1, n_tasks))


def _one_pass(grads: Sequence[torch.Tensor], weights: Sequence[float] | None,
              out: torch.Tensor | None,
              gram: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Read every gradient once, chunk by chunk: per-task sums (the finiteness check), the Gram
    matrix (task affinity) and, given ``weights``, ``out = Σ wᵢ gᵢ`` in the fixed task order.

    One pass instead of one per sum, per pair and per addition: pairwise dot products read each
    gradient N times (quadratic memory traffic in N); here each chunk of the N gradients is stacked
    while it is in cache and its Gram block is one small matrix product."""
    n, numel = len(grads), grads[0].numel()
    sums = np.zeros(n)
    g = np.zeros((n, n)) if gram else None
    step = min(_chunk(n), numel)
    buf = _block_buffer(n * step)
    for a in range(0, numel, step):
        b = min(numel, a + step)
        block = buf[: n * (b - a)].view(n, b - a)
        # copy_ upcasts a bf16 transfer here, while the chunk is in cache
        for i, x in enumerate(grads):
            block[i].copy_(x[a:b])
        sums += block.sum(1).double().numpy()
        if g is not None:
            g += torch.mm(block, block.T).double().numpy()
        if weights is not None and out is not None:
            o = out[a:b]
            torch.mul(block[0], weights[0], out=o)
            # elementwise, fixed order: the same floating-point sum in every run
            for i in range(1, n):
                o.add_(block[i], alpha=weights[i])
    return sums, (_symmetric(g) if g is not None else None)


_BLOCKS: dict[int, torch.Tensor] = {}


def _block_buffer(numel: int) -> torch.Tensor:
    """A reused scratch buffer: a fresh one per step would page-fault its 8 MB in again every
    step."""
    if numel not in _BLOCKS:
        _BLOCKS.clear()
        _BLOCKS[numel] = torch.empty(numel, dtype=torch.float32)
    return _BLOCKS[numel]


def _symmetric(m: np.ndarray) -> np.ndarray:
    """``m`` made symmetric from its lower triangle. A BLAS product ``X Xᵀ`` need not be exactly
    symmetric (its blocking rounds ``(i, j)`` and ``(j, i)`` differently on some CPUs, AMD EPYC
    among them): one canonical triangle keeps every Gram matrix the same on any CPU and in both
    reduce paths."""
    return np.tril(m) + np.tril(m, -1).T


def _cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.maximum(np.diag(gram), 1e-30))
    return gram / np.outer(norms, norms)


def cosine_matrix(grads: Sequence[torch.Tensor]) -> np.ndarray:
    """Pairwise cosine similarity of task gradients: where tasks help or fight (task affinity).

    The Gram matrix in one chunked pass over the flat buffers (:func:`_one_pass`), no stacked
    copy."""
    return _cosine_from_gram(_one_pass(grads, None, None, gram=True)[1])


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


def _checked(r: TaskGrad, numel: int) -> torch.Tensor:
    g = as_tensor(r.grad)
    if g.dim() != 1 or g.numel() != numel or g.dtype not in (torch.float32, torch.bfloat16,
                                                             torch.float16):
        raise RaymetaError(
            f"task '{r.task}': gradient of shape {tuple(g.shape)} and dtype {g.dtype} does not "
                           "match "
            f"the shared parameters ({numel},) — the task's model differs from the driver's"
        )
    return g


def reduce_gradients(
    results: Sequence[TaskGrad], numel: int, *, step: int, seed: int = 0,
    rule: Literal["mean", "pcgrad"] = "mean", nan_policy: Literal["skip_task",
                                                                  "abort"] = "skip_task",
    affinity: bool = True, out: torch.Tensor | None = None,
) -> Reduced:
    """The meta-gradient of one step, once every task's gradient is at hand. Weights are
    renormalised over the tasks that survive. :class:`RunningReduce` gives the same result, bit for
    bit, while the gradients arrive.

    ``out``: a reusable buffer for the result (the driver keeps one: no 90 MB allocation per
    step)."""
    tensors = [_checked(r, numel) for r in results]
    if not tensors:
        raise NonFiniteGradient(f"step {step}: every task's gradient is non-finite; nothing to "
                                "apply")
    meta = out if out is not None else torch.empty(numel, dtype=torch.float32)
    total_all = sum(r.weight for r in results)
    fused = rule == "mean" or len(tensors) == 1  # PCGrad needs every gradient before the sum
    # One pass: sums for the finiteness check, the Gram matrix for affinity and, assuming every task
    # is finite (the usual case), the weighted sum. A skipped task costs a second pass below.
    sums, gram = _one_pass(tensors, [r.weight / total_all for r in results] if fused else None,
                           meta,
                           gram=affinity and len(tensors) > 1)
    return _finish(results, tensors, sums, gram, meta, fused, step=step, seed=seed, rule=rule,
                   nan_policy=nan_policy)


def _finish(results: Sequence[TaskGrad], tensors: list[torch.Tensor], sums: np.ndarray,
            gram: np.ndarray | None,
            meta: torch.Tensor, fused: bool, *, step: int, seed: int, rule: str,
            nan_policy: str) -> Reduced:
    """The finiteness verdict (``meta.nan_policy``), and the sum again over the surviving tasks when
    one was skipped (or under PCGrad, which needs them all): the part both reductions share."""
    # A sum is NaN/Inf iff an element is (or the values are so large that they overflow, which is as
    # broken).
    bad = {r.task: "loss" if not math.isfinite(r.loss) else "gradient" for i,
           r in enumerate(results)
           if not (math.isfinite(r.loss) and math.isfinite(sums[i]))}
    skipped = non_finite_policy(bad, len(results), step, nan_policy)  # type: ignore[arg-type]
    used_idx = [i for i, r in enumerate(results) if r.task not in bad]
    used = [results[i].task for i in used_idx]
    total = sum(results[i].weight for i in used_idx)
    w = [results[i].weight / total for i in used_idx]
    cos = (_cosine_from_gram(gram[np.ix_(used_idx, used_idx)])
           if gram is not None and len(used_idx) > 1 else None)
    if not fused or skipped:
        grads = [tensors[i].float() for i in used_idx]
        if rule == "pcgrad" and len(grads) > 1:
            grads = pcgrad(grads, seed=zlib.crc32(f"{seed}:{step}".encode()))
        meta.zero_()
        for wi, g in zip(w, grads):  # fixed order: deterministic floating-point sum
            meta.add_(g, alpha=wi)
    return Reduced(meta, used, skipped, dict(zip(used, w)), cos)


class RunningReduce:
    """:func:`reduce_gradients` while the gradients arrive: the driver adds each task's gradient as
    soon as every earlier one (in the fixed task order) has arrived, instead of waiting for all N,
    so that only the last one's share of the work is left when the slowest actor is done
    (benchmarks/results/overlap-cost-model.md).

    Each :meth:`add_many` makes one chunked pass over the gradients that have just arrived: their
    sums (the finiteness check), their dot products with themselves and every earlier gradient (the
    task-affinity Gram rows; the earlier gradients are read again, chunk by chunk, while the new
    chunk is in cache) and ``out += wᵢ gᵢ`` with the same elementwise operations, in the same order,
    as :func:`reduce_gradients`' one pass: the meta-gradient is the same, bit for bit. The cosines
    agree to float32 rounding (dot products accumulated in another order). :meth:`result` applies
    ``meta.nan_policy`` and PCGrad as :func:`reduce_gradients` does."""

    def __init__(self, results_weights: Sequence[tuple[str, float]], numel: int, *, step: int,
                 seed: int = 0,
                 rule: Literal["mean", "pcgrad"] = "mean",
                 nan_policy: Literal["skip_task", "abort"] = "skip_task",
                 affinity: bool = True, out: torch.Tensor | None = None):
        self.tasks = [t for t, _ in results_weights]
        n = len(self.tasks)
        total_all = sum(w for _, w in results_weights)
        self.raw = [w for _, w in results_weights]
        self.weights = [w / total_all for w in self.raw]
        self.numel, self.step, self.seed = numel, step, seed
        self.rule, self.nan_policy = rule, nan_policy
        self.fused = rule == "mean" or n == 1
        self.meta = out if out is not None else torch.empty(numel, dtype=torch.float32)
        self.sums = np.zeros(n)
        self.gram = np.zeros((n, n)) if affinity and n > 1 else None
        self.tensors: list[torch.Tensor] = []
        self.losses: list[float] = []

    def add(self, grad: np.ndarray | torch.Tensor, loss: float) -> None:
        """The next task's gradient (task order) and loss."""
        self.add_many([(grad, loss)])

    def add_many(self, arrived: Sequence[tuple[np.ndarray | torch.Tensor, float]]) -> None:
        """The next tasks' gradients (task order) and losses, in one chunked pass: gradients that
        arrive together cost what :func:`reduce_gradients`' one pass costs, and all N at once is
        that pass (the same Gram block products too). A lone arrival's Gram row is its dot products
        with the earlier gradients (no copies)."""
        i0 = len(self.tensors)
        for k, (grad, loss) in enumerate(arrived):
            i = i0 + k
            self.tensors.append(_checked(TaskGrad(self.tasks[i], grad, loss, self.raw[i]),
                                         self.numel))
            self.losses.append(loss)
        i1 = len(self.tensors)
        step = min(_chunk(len(self.tasks)), self.numel)
        # the new rows, and the earlier ones too when the Gram block product needs them stacked
        stacked = i0 if self.gram is None or i1 - i0 == 1 else 0  # the first row the block holds
        buf = _block_buffer(len(self.tasks) * step)
        rows = np.zeros((i1 - i0, i1))
        for a in range(0, self.numel, step):
            b = min(self.numel, a + step)
            block = buf[: (i1 - stacked) * (b - a)].view(i1 - stacked, b - a)
            # copy_ upcasts a bf16 transfer here, while it is in cache
            for r, i in enumerate(range(stacked, i1)):
                block[r].copy_(self.tensors[i][a:b])
            new = block[i0 - stacked:]
            self.sums[i0:i1] += new.sum(1).double().numpy()
            if self.gram is not None:
                # one new gradient: dot products with the earlier ones, read in place
                if i1 - i0 == 1:
                    x = new[0]
                    rows[0, :i0] += [float(torch.dot(x, self.tensors[j][a:b].float()))
                                     for j in range(i0)]
                    rows[0, i0] += float(torch.dot(x, x))
                else:
                    rows += torch.mm(new, block.T).double().numpy()
            if self.fused:
                o = self.meta[a:b]
                # elementwise, fixed order: reduce_gradients' sum, bit for bit
                for r, i in enumerate(range(i0, i1)):
                    if i == 0:
                        torch.mul(new[r], self.weights[0], out=o)
                    else:
                        o.add_(new[r], alpha=self.weights[i])
        if self.gram is not None:
            self.gram[i0:i1, :i1] = rows
            self.gram[:i1, i0:i1] = rows.T
            # the new rows' own block from its lower triangle, as _one_pass makes it
            self.gram[i0:i1, i0:i1] = _symmetric(rows[:, i0:i1])

    def result(self) -> Reduced:
        """After every task's :meth:`add`: the meta-gradient and what was used."""
        if len(self.tensors) != len(self.tasks):
            raise ValueError(f"RunningReduce: {len(self.tensors)} of {len(self.tasks)} gradients "
                             "added")
        results = [TaskGrad(t, g, loss, w) for t, g, loss, w in zip(self.tasks, self.tensors,
                                                                    self.losses, self.raw)]
        return _finish(results, self.tensors, self.sums, self.gram, self.meta, self.fused,
                       step=self.step,
                       seed=self.seed, rule=self.rule, nan_policy=self.nan_policy)


# -- reduced where computed: a worker's several tasks (resources.workers) ------------------------


def add_weighted(acc: torch.Tensor | None, grad: torch.Tensor, weight: float) -> torch.Tensor:
    """``acc + weight · grad`` in place (a new float32 buffer when ``acc`` is None): a worker's
    partial sum Σ wᵢ gᵢ over its finite tasks, in its task order, so that one gradient per worker
    travels instead of one per task."""
    if acc is None:
        return torch.mul(grad.float(), weight)
    return acc.add_(grad, alpha=weight)


def mean_of_partials(partials: Sequence[tuple[np.ndarray | torch.Tensor, float]],
                     out: torch.Tensor) -> torch.Tensor:
    """The meta-gradient Σ wᵢ gᵢ / Σ wᵢ from the workers' partial sums ``(Σ wᵢ gᵢ, Σ wᵢ)`` over
    their finite tasks, in worker order: the weights renormalised over the tasks that survived, as
    :func:`reduce_gradients` does. The sum is grouped by worker, so it equals the one-pass sum up
    to float32 rounding (≤ 1e-5 relative: tests/integration/test_workers.py), not bit for bit."""
    total = sum(w for _, w in partials)
    if not total > 0:
        raise NonFiniteGradient("every task's gradient is non-finite; nothing to apply")
    out.zero_()
    for grad, weight in partials:
        if weight > 0:
            out.add_(as_tensor(grad), alpha=1.0 / total)
    return out
