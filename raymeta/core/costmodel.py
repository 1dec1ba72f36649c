"""A cost model of the meta-step in both reduce forms, fitted on ``raymeta speed`` rows and projected to GPU clusters.

benchmarks/RESULTS.md §13 quotes its fit and its projection; ``raymeta speed --project`` prints them. Pure Python and
numpy (no torch, no Ray): the trainer's ``meta.reduce: auto`` calls :func:`default_reduce` before any actor starts.

**The step.** A meta-step is the slowest task actor's compute ``C`` plus what runs in series around it:

- ``reduce: driver``: *publish* (the driver's ``ray.put`` of the float32 parameters and an actor's load), *transfer*
  (each task gradient back to the driver: its copy into the actor's object store, the driver's read), *reduce* (one
  pass over the N gradients: the weighted sum Σ wᵢ gᵢ and the task-affinity Gram matrix, whose row for gradient i
  reads the i earlier ones again, N(N+1)/2 gradient reads in all) and the *outer* AdamW step, all on the driver;
- ``reduce: collective``: the ring *all-reduce* among the actors (every rank sends and receives 2(N−1)/N of the
  gradient buffer, in 2(N−1) hops) and the *outer* step, on every rank at once.

Every term is affine in the bytes, the number of tasks N and their products (:class:`CostConstants`); :func:`fit`
fits each from its own measured column of ``raymeta speed`` (not from the step time alone) and reports how well the
sum predicts each measured step.

**Overlap** (``meta.overlap``; :func:`step_time` documents each assumption): the driver adds each gradient as soon as
every earlier one has arrived, so only the last arrival's share of the reduction stays in series when the arrivals are
spread out; the collective form all-reduces gradient buckets (``meta.bucket_mb``) from autograd hooks during the
backward pass, taken as 2/3 of the compute (the 6·P·tokens rule: forward 2, backward 4), so what stays in series is
the last bucket, or the all-reduce beyond the backward pass when the link is too slow to keep up.

**One machine and a cluster.** The constants describe this machine: Ray's object store, gloo over loopback and a CPU
driver. With ``cores`` (the CPUs the actors share), N actors on fewer cores run their collective outer steps and the
ring's byte traffic ``N / cores`` times slower, as they did on the 2-CPU VM of §5. On a :class:`Link` (one task actor
per GPU, one GPU per node), the driver's network card sends the parameters to N actors and receives N gradients one
after another (N·bytes / bandwidth each way), the all-reduce moves 2(N−1)/N·bytes per rank at the link's bandwidth
with its per-hop latency (ring, or NCCL's tree where that is faster), and the collective outer step runs on each
GPU (memory-bound, :data:`ADAM_BYTES_PER_PARAM`); the driver's reduction and outer step keep this CPU's fitted costs
(a faster driver CPU makes them smaller: conservative for the driver form), and so do the fixed costs of a step
(Ray's round trips), measured on a loaded 2-CPU VM: at GPU compute times of 5-30 ms they weigh on both forms.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

__all__ = [
    "MODES", "BUCKET_BYTES", "BACKWARD_FRACTION", "ADAM_BYTES_PER_PARAM", "BERT_BASE_PARAMS", "BERT_BASE_FLOP_PARAMS",
    "BERT_BASE_LORA_PARAMS", "BERT_BASE_LORA_QV_PARAMS", "PROJECTION_TOKENS", "CostConstants", "Link", "Device",
    "A100", "H100", "CPU_CORE", "StepBreakdown", "FitResult", "MEASURED", "parse_mode", "task_flops", "step_time",
    "summary_of", "fit", "predict", "fit_from_result", "load_fit", "project", "driver_limit", "default_reduce",
    "format_projection", "format_fit", "projection_report",
]

# `raymeta speed --reduce` modes: the reduce form, with overlap unless ":no-overlap"
MODES = ("driver", "collective", "driver:no-overlap", "collective:no-overlap")
BUCKET_BYTES = 25 * 2**20  # meta.bucket_mb's default (DDP's bucket_cap_mb)
BACKWARD_FRACTION = 2 / 3  # of a task's compute: backward 4·P·tokens of the 6·P·tokens
# fused AdamW per float32 parameter: reads param, grad, exp_avg, exp_avg_sq (16 B), writes three (12 B); clipping's
# norm reads the gradient once more (4 B)
ADAM_BYTES_PER_PARAM = 32
# BERT-base (bert-base-uncased): 109.5M parameters with the pooler; 85.05M outside the embeddings (12 layers of
# 7,087,872), which are the ones a token's matmuls touch: FLOPs use those, bytes use all of them
BERT_BASE_PARAMS = 110e6
BERT_BASE_FLOP_PARAMS = 85_054_464
# LoRA r = 8 on BERT-base. raymeta's default targets for BERT (raymeta/core/trainable.py): query, key, value and
# every dense (attention output, intermediate, output): 12 · 8 · (3·1536 + 1536 + 3840 + 3840) = 1,327,104
# (MiniLM-L6: 331,776, as measured in §6.2). The LoRA paper's query + value only: 12 · 2 · 8 · 1536 = 294,912.
BERT_BASE_LORA_PARAMS = 1_327_104
BERT_BASE_LORA_QV_PARAMS = 294_912
# tokens per task and meta-step in the projection: a 5-way episode of 5 + 5 shots × 128 tokens, the size of the
# GPU bundle's compute probe (RESULTS.md §8); the 8 × 64 tokens of §5 would leave a GPU mostly idle
PROJECTION_TOKENS = 6400

Mode = Literal["driver", "collective"]


def parse_mode(mode: str) -> tuple[Mode, bool]:
    """``"collective:no-overlap"`` → ``("collective", False)``; ``"driver"`` → ``("driver", True)``."""
    base, _, suffix = mode.partition(":")
    if base not in ("driver", "collective") or suffix not in ("", "no-overlap"):
        raise ValueError(f"unknown reduce mode '{mode}' (known: {', '.join(MODES)})")
    return base, suffix != "no-overlap"  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------- constants, links, devices


@dataclass(frozen=True)
class CostConstants:
    """Seconds per unit of each term of the step, on the machine they were fitted on (see the module docstring).

    ``B`` below is bytes: the float32 parameters (4 per parameter) for publish and reduce, the gradient as it travels
    (``meta.transfer_dtype``) for transfer and the all-reduce; ``N`` is the number of task actors, ``P`` parameters.
    A task's compute is an input of :func:`step_time`, not a constant."""

    # driver: publish = fixed + per_byte·B + per_task·N (ray.put, then each actor's load: one remote call each)
    publish_fixed_s: float = 0.0
    publish_s_per_byte: float = 0.0
    publish_s_per_task: float = 0.0
    # driver: transfer = fixed + per_task·N + per_byte·B (one gradient into its actor's store, in parallel)
    #                    + per_byte_task·N·B (the driver reads the N gradients one after another)
    transfer_fixed_s: float = 0.0
    transfer_s_per_task: float = 0.0
    transfer_s_per_byte: float = 0.0
    transfer_s_per_byte_task: float = 0.0
    # driver: reduce = fixed + per_byte·N·B (the weighted sum) + per_byte_pair·N(N+1)/2·B (the Gram matrix)
    reduce_fixed_s: float = 0.0
    reduce_s_per_byte: float = 0.0
    reduce_s_per_byte_pair: float = 0.0
    # outer AdamW step (clipping and the scheduler included) = fixed + per_param·P: the driver's, or each rank's
    outer_fixed_s: float = 0.0
    outer_s_per_param: float = 0.0
    # collective: all-reduce = fixed (the step's Ray round trip, the finiteness vote) + per_hop·2(N−1)
    #                          + per_byte·2(N−1)/N·B (ring)
    allreduce_fixed_s: float = 0.0
    allreduce_s_per_hop: float = 0.0
    allreduce_s_per_byte: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostConstants:
        return cls(**{f.name: float(data[f.name]) for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class Link:
    """The network between nodes: ``gbps`` gigabits per second each way per node, ``latency_s`` per message (one hop
    of the ring; 10 µs: RDMA-class, TCP is nearer 50 µs)."""

    gbps: float
    latency_s: float = 10e-6

    @property
    def bytes_per_s(self) -> float:
        return self.gbps * 1e9 / 8

    def __str__(self) -> str:
        return f"{self.gbps:g} Gb/s"


@dataclass(frozen=True)
class Device:
    """What runs one task actor: ``peak_flops`` (dense bf16 for a GPU) at ``mfu`` model-FLOP utilisation, and
    ``mem_bw`` (bytes/s) for a memory-bound outer step on the device (None: the fitted CPU outer step)."""

    name: str
    peak_flops: float
    mfu: float = 0.40
    mem_bw: float | None = None

    def compute_s(self, flops: float) -> float:
        return flops / (self.peak_flops * self.mfu)


# datasheets: dense bf16 tensor-core peak (no sparsity), HBM bandwidth (A100 SXM 80 GB, H100 SXM)
A100 = Device("A100", 312e12, 0.40, 2.039e12)
H100 = Device("H100", 989e12, 0.40, 3.35e12)
# one actor on one core of the 2-CPU VM of RESULTS.md §5: MiniLM (22.6M parameters) at 8 × 64 tokens took 0.64 s per
# task (§5.2, driver), 6 · 22.6M · 512 FLOPs: ~1.1e11 FLOP/s as 6·P·tokens counts them, embeddings included
CPU_CORE = Device("CPU core (RESULTS.md §5 VM)", 1.1e11, 1.0, None)


def task_flops(tokens: float, params: float, trainable: float | None = None) -> float:
    """One task's forward and backward: 2·P·tokens forward, 2·P·tokens for the activations' gradients (every layer,
    frozen or not, passes them down) and 2·T·tokens for the trainable weights' gradients: 6·P·tokens when everything
    trains, ≈ 4·P·tokens for LoRA. A second-order MAML inner loop costs more (a backward through the inner steps)."""
    t = params if trainable is None else min(trainable, params)
    return tokens * (4.0 * params + 2.0 * t)


# ----------------------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class StepBreakdown:
    """One meta-step, term by term (seconds). Each term is the part in series with the compute; ``hidden`` holds the
    part of a term that ran under the compute (not in ``step_s``), and ``overlapped`` names those terms."""

    mode: Mode
    n: int
    overlap: bool
    compute_s: float
    publish_s: float = 0.0
    transfer_s: float = 0.0
    reduce_s: float = 0.0
    allreduce_s: float = 0.0
    outer_s: float = 0.0
    hidden: dict[str, float] = field(default_factory=dict)

    @property
    def overlapped(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.hidden.items() if v > 0)

    @property
    def serial_s(self) -> float:
        """What the step spends beyond the slowest actor's compute."""
        return self.publish_s + self.transfer_s + self.reduce_s + self.allreduce_s + self.outer_s

    @property
    def step_s(self) -> float:
        return self.compute_s + self.serial_s

    @property
    def step_over_compute(self) -> float:
        return self.step_s / self.compute_s if self.compute_s > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "overlapped": list(self.overlapped), "serial_s": self.serial_s,
                "step_s": self.step_s, "step_over_compute": self.step_over_compute}


def _share(n: int, cores: float | None) -> float:
    return max(1.0, n / cores) if cores else 1.0


def _allreduce_call(n: int, nbytes: float, c: CostConstants, link: Link | None, share: float) -> float:
    """One all-reduce of ``nbytes`` among ``n`` ranks. One machine (gloo): a ring, 2(N−1) hops moving 2(N−1)/N of
    the bytes through every rank, at the fitted per-hop and per-byte costs (``share``: N ranks on fewer cores). On a
    link (NCCL): the faster of that ring at the link's latency and bandwidth and a double binary tree (2·⌈log₂ N⌉
    hops, about 2 bytes moved per byte), as NCCL picks per call: at 256 ranks a flat ring's 510 hops would cost each
    25 MB bucket 5 ms of latency alone."""
    if n <= 1:
        return 0.0
    ring_bytes = 2 * (n - 1) / n * nbytes
    if link is None:
        return 2 * (n - 1) * c.allreduce_s_per_hop + ring_bytes * c.allreduce_s_per_byte * share
    ring = 2 * (n - 1) * link.latency_s + ring_bytes / link.bytes_per_s
    tree = 2 * math.ceil(math.log2(n)) * link.latency_s + 2 * nbytes / link.bytes_per_s
    return min(ring, tree)


def step_time(mode: Mode, n: int, grad_bytes: float, params: float, compute_s: float, c: CostConstants,
              overlap: bool, link: Link | None = None, *, cores: float | None = None, device: Device | None = None,
              bucket_bytes: float = BUCKET_BYTES, backward_fraction: float = BACKWARD_FRACTION,
              spread_s: float | None = None) -> StepBreakdown:
    """The meta-step of ``n`` task actors, ``params`` trainable parameters and ``grad_bytes`` per task gradient.

    ``compute_s``: the slowest actor's compute. ``link``: None for one machine (the constants alone), else actors on
    separate nodes joined by it. ``cores``: on one machine, the CPUs the actors share (None: one each). ``device``:
    with a ``mem_bw``, the collective form's outer step runs on it.

    Assumptions, term by term:

    - driver, publish and transfer: in series with the compute (every actor needs the parameters first; the tasks
      cost the same, so their gradients arrive together). On a link the driver's card sends N copies of the
      parameters and receives N gradients, one after another (Ray fetches each object from its owner's node).
    - driver, reduce with overlap: gradient i is added (its sum, its Gram row) as soon as it and every earlier one
      have arrived. ``spread_s`` is how far apart the actors finish: None assumes far enough that all but the last
      arrival's share hides behind the slower actors (what the trainer's ``RunningReduce`` aims at); on a link the
      card's one-after-another arrivals spread them by (N−1)·bytes / bandwidth more. In series stays the larger of
      the last share and the reduction beyond that spread.
    - collective with overlap: buckets of ``bucket_bytes`` are all-reduced in order as the backward pass
      (``backward_fraction`` of the compute) produces them; the last bucket is ready only when it ends, so in series
      stays the larger of the last bucket's all-reduce and the whole all-reduce beyond the backward pass. Each bucket
      pays its own latency (hops; :func:`_allreduce_call`), so with many buckets, many ranks and a short backward
      pass overlap could lose to one all-reduce after the compute. Without overlap: one all-reduce of the whole
      buffer after the compute.
    - collective outer step: every rank at once, in parallel (``cores``: N/cores times the one-rank time).
    """
    if mode not in ("driver", "collective"):
        raise ValueError(f"step_time: mode must be 'driver' or 'collective', got '{mode}'")
    if n < 1:
        raise ValueError(f"step_time: n must be at least 1, got {n}")
    share = _share(n, cores)
    pbytes = 4.0 * params  # float32 parameters: what is published, and what the driver reduces in
    hidden: dict[str, float] = {}
    if mode == "driver":
        publish = c.publish_fixed_s + c.publish_s_per_byte * pbytes + c.publish_s_per_task * n
        transfer = (c.transfer_fixed_s + c.transfer_s_per_task * n + c.transfer_s_per_byte * grad_bytes
                    + c.transfer_s_per_byte_task * n * grad_bytes)
        if link is not None:
            publish += link.latency_s + n * pbytes / link.bytes_per_s
            transfer += link.latency_s + n * grad_bytes / link.bytes_per_s
        total = c.reduce_s_per_byte * n * pbytes + c.reduce_s_per_byte_pair * n * (n + 1) / 2 * pbytes
        exposed = total
        if overlap and n > 1:
            last = c.reduce_s_per_byte * pbytes + c.reduce_s_per_byte_pair * n * pbytes  # gradient N: sum, Gram row
            window = math.inf if spread_s is None else spread_s
            if link is not None:
                window += (n - 1) * grad_bytes / link.bytes_per_s
            exposed = max(last, total - window)
            hidden["reduce"] = total - exposed
        outer = c.outer_fixed_s + c.outer_s_per_param * params
        return StepBreakdown("driver", n, overlap, compute_s, publish_s=publish, transfer_s=transfer,
                             reduce_s=c.reduce_fixed_s + exposed, outer_s=outer, hidden=hidden)
    if overlap and n > 1:
        buckets = max(1, math.ceil(grad_bytes / bucket_bytes))
        last_bytes = grad_bytes - (buckets - 1) * bucket_bytes
        whole = (buckets - 1) * _allreduce_call(n, bucket_bytes, c, link, share) + _allreduce_call(n, last_bytes, c,
                                                                                                   link, share)
        last = _allreduce_call(n, last_bytes, c, link, share)
        exposed = max(last, whole - backward_fraction * compute_s)
        hidden["allreduce"] = whole - exposed
    else:
        exposed = _allreduce_call(n, grad_bytes, c, link, share)
    if device is not None and device.mem_bw:
        outer = c.outer_fixed_s + ADAM_BYTES_PER_PARAM * params / device.mem_bw
    else:
        outer = (c.outer_fixed_s + c.outer_s_per_param * params) * share
    return StepBreakdown("collective", n, overlap, compute_s, allreduce_s=c.allreduce_fixed_s + exposed, outer_s=outer,
                         hidden=hidden)


def summary_of(bd: StepBreakdown) -> dict[str, Any]:
    """The per-mode summary ``raymeta speed`` would measure for this step (its keys and units: ms), e.g. to test
    :func:`fit` on rows of known constants."""
    out: dict[str, Any] = {"step_ms": 1e3 * bd.step_s, "compute_ms": 1e3 * bd.compute_s, "outer_ms": 1e3 * bd.outer_s,
                           "overlap": bd.overlap, "step_over_compute": bd.step_over_compute,
                           "overhead_ms": 1e3 * bd.serial_s}
    if bd.mode == "driver":
        out.update(publish_ms=1e3 * bd.publish_s, load_ms=0.0, transfer_ms=1e3 * bd.transfer_s,
                   reduce_ms=1e3 * bd.reduce_s)
    else:
        out["allreduce_ms"] = 1e3 * bd.allreduce_s
    return out


# ----------------------------------------------------------------------------------------- the fit

# each component: its constants, and per observation the feature each constant multiplies
_COMPONENTS: dict[str, tuple[str, ...]] = {
    "publish": ("publish_fixed_s", "publish_s_per_byte", "publish_s_per_task"),
    "transfer": ("transfer_fixed_s", "transfer_s_per_task", "transfer_s_per_byte", "transfer_s_per_byte_task"),
    "reduce": ("reduce_fixed_s", "reduce_s_per_byte", "reduce_s_per_byte_pair"),
    "outer": ("outer_fixed_s", "outer_s_per_param"),
    "allreduce": ("allreduce_fixed_s", "allreduce_s_per_hop", "allreduce_s_per_byte"),
}
_FLOOR_S = 1e-4  # relative weights: a term measured below 0.1 ms weighs as 0.1 ms


@dataclass
class FitResult:
    """:func:`fit`'s constants, how each component was fitted, and each measured step against its prediction."""

    constants: CostConstants
    cores: float | None
    components: dict[str, dict[str, Any]]  # name -> observations, rank of its design, whether the prior filled in
    rows: list[dict[str, Any]]  # model, tasks, trainable, mode, measured_ms, predicted_ms, error (relative)
    max_abs_error: float
    median_abs_error: float

    def to_dict(self) -> dict[str, Any]:
        return {"constants": self.constants.to_dict(), "cores": self.cores, "components": self.components,
                "rows": self.rows, "max_abs_error": self.max_abs_error, "median_abs_error": self.median_abs_error}


def _row_modes(row: Mapping[str, Any]) -> Iterable[tuple[str, Mode, bool, Mapping[str, Any]]]:
    for key in MODES:
        m = row.get(key)
        if isinstance(m, Mapping) and m.get("step_ms") is not None:
            base, overlap = parse_mode(key)
            yield key, base, bool(m.get("overlap", overlap)), m


def _sizes(row: Mapping[str, Any], base: Mode, m: Mapping[str, Any]) -> tuple[float, float]:
    """(trainable parameters, bytes per task gradient) of a row."""
    params = float(row.get("shared_numel") or row["shared_bytes"] / 4)
    grad = 4.0 * params
    if base == "driver" and m.get("bytes_counted") == "measured" and m.get("bytes_per_actor") is not None:
        grad = float(m["bytes_per_actor"]) - 4.0 * params  # what was returned (bfloat16: half)
    return params, grad


def _ms(m: Mapping[str, Any], *keys: str) -> float | None:
    vals = [m.get(k) for k in keys]
    if any(v is None or not math.isfinite(float(v)) for v in vals):
        return None
    return sum(float(v) for v in vals) / 1e3


def _observations(rows: Sequence[Mapping[str, Any]], cores: float | None) -> dict[str, list[tuple[list[float], float]]]:
    """Per component, (features, measured seconds): the rows' own columns for that term."""
    obs: dict[str, list[tuple[list[float], float]]] = {k: [] for k in _COMPONENTS}
    for row in rows:
        n = int(row["tasks"])
        for _, base, overlap, m in _row_modes(row):
            params, grad = _sizes(row, base, m)
            pbytes, share = 4.0 * params, _share(n, cores)
            if (y := _ms(m, "outer_ms")) is not None:
                obs["outer"].append(([1.0, params] if base == "driver" else [share, share * params], y))
            if base == "driver":
                if (y := _ms(m, "publish_ms", "load_ms")) is not None:
                    obs["publish"].append(([1.0, pbytes, float(n)], y))
                if overlap:  # the reduction of the earlier gradients runs inside the wait: neither column is clean
                    continue
                if (y := _ms(m, "transfer_ms")) is not None:
                    obs["transfer"].append(([1.0, float(n), grad, n * grad], y))
                if (y := _ms(m, "reduce_ms")) is not None:
                    obs["reduce"].append(([1.0, n * pbytes, n * (n + 1) / 2 * pbytes], y))
            elif not overlap and (y := _ms(m, "allreduce_ms")) is not None:
                obs["allreduce"].append(([1.0, 2.0 * (n - 1), 2 * (n - 1) / n * grad * share], y))
    return obs


def _solve(x: np.ndarray, y: np.ndarray, prior: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Least squares for the ``free`` columns (the others at zero), each row weighted by 1/|y| (relative error).
    Where the rows cannot tell constants apart, the prior's are changed least in relative terms (the minimum-norm
    correction in units of each prior constant): a term that is small in these rows (a per-byte cost, measured on
    one small model) keeps about its prior value, and the terms the rows do show absorb the difference."""
    w = 1.0 / np.maximum(np.abs(y), _FLOOR_S)
    theta = np.where(free, prior, 0.0)
    a = x[:, free] * w[:, None]
    if a.size == 0:
        return theta
    norms = np.linalg.norm(a, axis=0)
    unit = 1.0 / np.where(norms > 0, norms, 1.0)  # a constant without a prior: a change of one column norm
    scale = np.where(prior[free] > 0, prior[free], unit)
    resid = (y - x @ theta) * w
    delta, *_ = np.linalg.lstsq(a * scale, resid, rcond=1e-10)
    theta[free] += delta * scale
    return theta


def _fit_component(obs: list[tuple[list[float], float]], prior: np.ndarray) -> tuple[np.ndarray, int]:
    """Non-negative weighted least squares over every subset of the constants (a handful: exact NNLS), nearest the
    prior where the rows cannot tell the constants apart. Returns the constants and the design's rank."""
    x = np.array([f for f, _ in obs], dtype=float)
    y = np.array([v for _, v in obs], dtype=float)
    w = 1.0 / np.maximum(np.abs(y), _FLOOR_S)
    k = x.shape[1]
    scaled = x * w[:, None]
    norms = np.linalg.norm(scaled, axis=0)
    rank = int(np.linalg.matrix_rank(scaled / np.where(norms == 0, 1.0, norms), tol=1e-9))
    best: tuple[float, int, np.ndarray] | None = None
    for zeros in range(k + 1):  # the fewest constants pinned at zero first
        for pinned in itertools.combinations(range(k), zeros):
            free = np.ones(k, dtype=bool)
            free[list(pinned)] = False
            theta = _solve(x, y, np.maximum(prior, 0.0), free)
            if (theta < -1e-15).any():
                continue
            cost = float(np.sum(((x @ theta - y) * w) ** 2))
            if best is None or cost < best[0] * (1 - 1e-12) - 1e-30:
                best = (cost, zeros, np.maximum(theta, 0.0))
        if best is not None and best[0] <= 1e-24:
            break  # exact: more zeros cannot do better
    assert best is not None  # every constant at zero is always feasible
    return best[2], rank


def fit(rows: Sequence[Mapping[str, Any]], *, cores: float | None = None,
        prior: CostConstants | None = None) -> FitResult:
    """Fit :class:`CostConstants` to ``raymeta speed`` result rows (``result["rows"]``: any models, N and modes of
    :data:`MODES`; a mode's ``"overlap"`` key, where present, overrides what its name says), then predict each row's
    step from its measured compute.

    Each component is fitted from its own column: publish + load (driver rows) against bytes and N, transfer
    against N, bytes and N·bytes, reduce against N·bytes and N(N+1)/2·bytes, outer against parameters (driver rows,
    and collective rows times the ``cores`` share), all-reduce against hops and ring bytes. Transfer, reduce and
    all-reduce come from ``:no-overlap`` rows only (with overlap their work is inside the compute or the wait); a
    component no row measures keeps ``prior``'s constants (default :data:`MEASURED`), and where the rows cannot
    separate constants (one model size cannot tell a fixed cost from a per-byte one) the prior's change least, in
    relative terms (:func:`_solve`). Least squares of the relative error, constants ≥ 0. ``cores``: the CPUs the
    rows' actors shared (``result["machine"]["affinity"]``)."""
    prior = MEASURED if prior is None else prior
    values = prior.to_dict()
    components: dict[str, dict[str, Any]] = {}
    for name, obs in _observations(rows, cores).items():
        keys = _COMPONENTS[name]
        if not obs:
            components[name] = {"observations": 0, "rank": 0, "constants": len(keys), "from_prior": True}
            continue
        theta, rank = _fit_component(obs, np.array([values[k] for k in keys]))
        values.update(dict(zip(keys, (float(t) for t in theta))))
        components[name] = {"observations": len(obs), "rank": rank, "constants": len(keys),
                            "from_prior": rank < len(keys)}
    constants = CostConstants(**values)
    preds = predict(rows, constants, cores=cores)
    errs = [abs(p["error"]) for p in preds if math.isfinite(p["error"])]
    return FitResult(constants, cores, components, preds, max(errs) if errs else math.nan,
                     statistics.median(errs) if errs else math.nan)


def predict(rows: Sequence[Mapping[str, Any]], c: CostConstants, *, cores: float | None = None) -> list[dict[str, Any]]:
    """Each measured step of ``rows`` (every mode of every row) against :func:`step_time`'s prediction from its
    measured compute: model, tasks, trainable, algorithm, mode, overlap, measured_ms, predicted_ms, compute_ms and
    the relative error (predicted − measured) / measured."""
    preds: list[dict[str, Any]] = []
    for row in rows:
        n = int(row["tasks"])
        for key, base, overlap, m in _row_modes(row):
            params, grad = _sizes(row, base, m)
            compute = float(m["compute_ms"]) / 1e3
            measured = float(m["step_ms"])
            predicted = 1e3 * step_time(base, n, grad, params, compute, c, overlap, cores=cores).step_s
            preds.append({"model": row.get("model"), "tasks": n, "trainable": row.get("trainable", "full"),
                          "algorithm": row.get("algorithm"), "mode": key, "overlap": overlap,
                          "measured_ms": measured, "predicted_ms": predicted, "compute_ms": 1e3 * compute,
                          "error": (predicted - measured) / measured if measured > 0 else math.nan})
    return preds


def fit_from_result(result: Mapping[str, Any], prior: CostConstants | None = None) -> FitResult:
    """:func:`fit` of a ``raymeta speed`` result (its JSON): its rows, on the CPUs its machine gave the actors."""
    m = result.get("machine") or {}
    cores = m.get("affinity") or m.get("cpus")
    return fit(result["rows"], cores=float(cores) if cores else None, prior=prior)


# Fitted by `raymeta speed --project --fit-from benchmarks/speed_overlap.json` (cores = 2) on the 40 rows of that
# run (benchmarks/RESULTS.md §13.1, 2026-12-05, the 2-CPU shared VM: MiniLM-L6 and the tiny BERT, N = 1, 2, 4, 8, 16,
# every reduce mode with and without overlap; |error| median 4.1%, max 13.6%). Refit from a newer or another
# machine's run the same way; this comment then names it. (tests/unit/test_costmodel.py's SECTION_5_1 holds the
# rows of an older run, §5.1, which fitted within a median 2.2% too.)
MEASURED = CostConstants(
    publish_fixed_s=0.0003862,
    publish_s_per_byte=1.267e-10,
    publish_s_per_task=0.0006619,
    transfer_fixed_s=0.004057,
    transfer_s_per_task=0.001359,
    transfer_s_per_byte=2.1e-10,
    transfer_s_per_byte_task=1.933e-11,
    reduce_fixed_s=0.0003176,
    reduce_s_per_byte=3.536e-10,
    reduce_s_per_byte_pair=1.888e-11,
    outer_fixed_s=0.001219,
    outer_s_per_param=1.906e-09,
    allreduce_fixed_s=0.002883,
    allreduce_s_per_hop=0.002125,
    allreduce_s_per_byte=7.466e-10,
)


# ----------------------------------------------------------------------------------------- projection


def _case(c: CostConstants, n: int, trainable_params: float, compute_s: float, device: Device, link: Link, *,
          bucket_bytes: float, spread_s: float | None) -> dict[str, StepBreakdown]:
    """Every mode of one cluster setup: ``n`` task actors, one per ``device``, float32 gradients."""
    out = {}
    for mode in MODES:
        base, overlap = parse_mode(mode)
        out[mode] = step_time(base, n, 4.0 * trainable_params, trainable_params, compute_s, c, overlap, link,
                              device=device, bucket_bytes=bucket_bytes, spread_s=spread_s)
    return out


def project(c: CostConstants = MEASURED, *, model: str = "BERT-base", model_params: float = BERT_BASE_PARAMS,
            flop_params: float = BERT_BASE_FLOP_PARAMS, lora_params: float = BERT_BASE_LORA_PARAMS,
            gpus: Sequence[int] = (8, 64, 256), devices: Sequence[Device] = (A100, H100),
            links: Sequence[float | Link] = (25, 100, 400), trainables: Sequence[str] = ("full", "lora"),
            tokens_per_task_step: float = PROJECTION_TOKENS, bucket_bytes: float = BUCKET_BYTES,
            spread_s: float | None = 0.0) -> list[dict[str, Any]]:
    """The meta-step of ``model`` with one task actor per GPU (N = GPUs), in every mode, per device, trainable mode,
    GPU count and link: one row each, with the compute, every mode's step and step / compute, and the faster form
    (with overlap).

    Compute per task: :func:`task_flops` (6·P·tokens full, ≈ 4·P·tokens LoRA, P the non-embedding parameters)
    / (peak · MFU): first-order algorithms; second-order MAML costs more, which only makes the exchange a smaller
    share. Full: every parameter trains and travels (``model_params``); LoRA: ``lora_params`` (r = 8, raymeta's
    default targets). ``spread_s=0``: the tasks cost the same on identical GPUs, so they finish together and the
    driver's overlap hides only behind its own card's one-after-another arrivals."""
    rows = []
    for device in devices:
        for trainable in trainables:
            if trainable not in ("full", "lora"):
                raise ValueError(f"project: trainable must be 'full' or 'lora', got '{trainable}'")
            tparams = model_params if trainable == "full" else lora_params
            # FLOPs: the non-embedding parameters, all of whose weight gradients a full model computes
            compute = device.compute_s(task_flops(tokens_per_task_step, flop_params,
                                                  flop_params if trainable == "full" else tparams))
            for n in gpus:
                for lk in links:
                    link = lk if isinstance(lk, Link) else Link(float(lk))
                    case = _case(c, n, tparams, compute, device, link, bucket_bytes=bucket_bytes, spread_s=spread_s)
                    d, co = case["driver"], case["collective"]
                    rows.append({
                        "model": model, "device": device.name, "mfu": device.mfu, "trainable": trainable,
                        "trainable_params": tparams, "gpus": n, "link_gbps": link.gbps,
                        "tokens_per_task_step": tokens_per_task_step, "compute_ms": 1e3 * d.compute_s,
                        **{f"{mode}_ms": 1e3 * bd.step_s for mode, bd in case.items()},
                        **{f"{mode}_over_compute": bd.step_over_compute for mode, bd in case.items()},
                        "faster": "driver" if d.step_s <= co.step_s else "collective",
                        "breakdown": {mode: bd.to_dict() for mode, bd in case.items()},
                    })
    return rows


def driver_limit(c: CostConstants = MEASURED, *, params: float = BERT_BASE_PARAMS,
                 flop_params: float = BERT_BASE_FLOP_PARAMS, trainable_params: float | None = None,
                 link: Link | float = 100.0, device: Device = A100, tokens_per_task_step: float = PROJECTION_TOKENS,
                 threshold: float = 1.10, basis: Literal["compute", "one_task"] = "compute", overlap: bool = True,
                 max_n: int = 4096, spread_s: float | None = 0.0) -> int | None:
    """The smallest N at which the driver form's step exceeds ``threshold`` × its ``basis``: where the driver reduce
    stops scaling. ``basis="compute"``: the task's compute (step / compute > 1.10: the exchange costs more than 10%
    on top); ``"one_task"``: the step with one task (weak scaling: adding tasks is no longer free, whatever the
    fixed cost per step). 1: not even one task stays under it (``"compute"`` only); None: it scales up to
    ``max_n``. Every serial term grows with N and the compute does not, so the ratio grows with N: one bisection.

    ``params`` are the model's parameters, ``trainable_params`` those that train and travel (default: all);
    the compute is :func:`task_flops` of ``flop_params`` on ``device``."""
    link = link if isinstance(link, Link) else Link(float(link))
    tparams = params if trainable_params is None else trainable_params
    compute = device.compute_s(task_flops(tokens_per_task_step, flop_params, min(tparams, flop_params)))

    def step(n: int) -> float:
        return step_time("driver", n, 4.0 * tparams, tparams, compute, c, overlap, link, spread_s=spread_s).step_s

    base = compute if basis == "compute" else step(1)

    def over(n: int) -> bool:
        return step(n) > threshold * base

    if over(1):
        return 1
    if not over(max_n):
        return None
    lo, hi = 1, max_n  # over(hi) and not over(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if over(mid) else (mid, hi)
    return hi


def default_reduce(n_actors: int, shared_numel: int, total_numel: int, tokens_per_task_step: float, *, local: bool,
                   combine: str = "mean", device: Device | None = None, compute_s: float | None = None,
                   link_gbps: float = 25.0, flop_numel: int | None = None,
                   c: CostConstants = MEASURED) -> tuple[Mode, str]:
    """``meta.reduce: auto``: ``("driver" | "collective", the reason in one line)``.

    In order: ``combine: pcgrad`` → driver (it needs every task gradient in one place); one actor → driver; ``local``
    (one machine, a local Ray instance) → driver (its transfers are memory copies; RESULTS.md §5.1 measured the
    driver no slower than the collective at every N on one machine). Otherwise both forms are projected with
    overlap (:func:`step_time` on a ``link_gbps`` link, the tasks finishing together), the compute per task being
    ``compute_s`` if given, else :func:`task_flops` of ``flop_numel`` (default ``total_numel``: the embeddings
    counted too, which overstates the compute) and ``shared_numel`` on ``device`` (default :data:`CPU_CORE`: actors
    without a GPU), and collective is chosen only when its step is at least 5% shorter:
    a tie goes to the driver, which also gives the task-affinity (Gram) matrix."""
    if combine == "pcgrad":
        return "driver", "meta.combine: pcgrad needs every task gradient in one place"
    if n_actors <= 1:
        return "driver", "one task actor: there is nothing to all-reduce"
    if local:
        return "driver", ("one machine: its transfers are memory copies, and the driver form was no slower than the "
                          "collective at any N there (benchmarks/RESULTS.md §5.1, §13.1)")
    dev = device or CPU_CORE
    compute = compute_s if compute_s is not None else dev.compute_s(
        task_flops(tokens_per_task_step, flop_numel or total_numel, shared_numel))
    link = Link(link_gbps)
    case = _case(c, n_actors, shared_numel, compute, dev, link, bucket_bytes=BUCKET_BYTES, spread_s=0.0)
    d, co = case["driver"].step_s, case["collective"].step_s
    where = f"{n_actors} actors on {dev.name}, {link_gbps:g} Gb/s, {shared_numel:,} trainable parameters"
    if co <= 0.95 * d:
        return "collective", f"projected step {1e3 * co:.1f} ms collective vs {1e3 * d:.1f} ms driver ({where})"
    return "driver", (f"projected step {1e3 * d:.1f} ms driver vs {1e3 * co:.1f} ms collective: collective not 5% "
                      f"faster ({where})")


# ----------------------------------------------------------------------------------------- tables


def _fmt(x: Any, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_projection(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`project`'s rows as a Markdown table."""
    cols = ("model", "device", "trainable", "GPUs (= tasks)", "link Gb/s", "compute ms", "driver ms",
            "driver no-overlap ms", "collective ms", "collective no-overlap ms", "driver step/compute",
            "collective step/compute", "faster (overlap)")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join([
            str(r["model"]), str(r["device"]), f"{r['trainable']} ({r['trainable_params'] / 1e6:.2f}M)", str(r["gpus"]),
            f"{r['link_gbps']:g}", _fmt(r["compute_ms"], ".1f"), _fmt(r["driver_ms"], ".1f"),
            _fmt(r["driver:no-overlap_ms"], ".1f"), _fmt(r["collective_ms"], ".1f"),
            _fmt(r["collective:no-overlap_ms"], ".1f"), _fmt(r["driver_over_compute"], ".2f"),
            _fmt(r["collective_over_compute"], ".2f"), f"**{r['faster']}**",
        ]) + " |")
    return "\n".join(lines)


_UNITS = {"_s": ("ms", 1e3), "_s_per_task": ("ms/task", 1e3), "_s_per_byte": ("ms/MB", 1e9),
          "_s_per_byte_task": ("ms/(MB·task)", 1e9), "_s_per_byte_pair": ("ms/(MB·pair)", 1e9),
          "_s_per_param": ("ms/M params", 1e9), "_s_per_hop": ("ms/hop", 1e3)}


def format_fit(result: FitResult | Mapping[str, Any]) -> str:
    """A fit's constants (readable units), its components and each row's prediction, as Markdown."""
    d = result.to_dict() if isinstance(result, FitResult) else dict(result)
    lines = [f"cost model fit (benchmarks/RESULTS.md §13): {len(d['rows'])} measured steps, cores = "
             f"{_fmt(d.get('cores'), 'g')}; |error| median {_fmt(d['median_abs_error'], '.1%')}, "
             f"max {_fmt(d['max_abs_error'], '.1%')}", "", "| constant | value |", "|---|---|"]
    for key, value in d["constants"].items():
        suffix = next(s for s in sorted(_UNITS, key=len, reverse=True) if key.endswith(s))
        unit, factor = _UNITS[suffix]
        lines.append(f"| {key} | {value * factor:.4g} {unit} |")
    lines += ["", "| component | observations | rank / constants | prior fills in |", "|---|---|---|---|"]
    for name, comp in d["components"].items():
        lines.append(f"| {name} | {comp['observations']} | {comp['rank']} / {comp['constants']} | "
                     f"{'yes' if comp['from_prior'] else 'no'} |")
    lines += ["", "| model | N | trainable | mode | compute ms | measured step ms | predicted ms | error |",
              "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['model']} | {r['tasks']} | {r['trainable']} | {r['mode']} | {_fmt(r['compute_ms'], '.1f')} "
                     f"| {_fmt(r['measured_ms'], '.1f')} | {_fmt(r['predicted_ms'], '.1f')} | "
                     f"{_fmt(r['error'], '+.1%')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- `raymeta speed --project`

MINILM_PARAMS = 22_565_376  # MiniLM-L6's trainable parameters in raymeta (the pooler is not used), RESULTS.md §5
MINILM_ALL_PARAMS = 22_713_216


def load_fit(path: str | Path) -> FitResult:
    """:func:`fit_from_result` of a ``raymeta speed --output`` file; anything else is a one-line
    :class:`~raymeta.errors.RaymetaError` naming the file."""
    from ..errors import RaymetaError

    where = f"--fit-from {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RaymetaError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RaymetaError(f"{where}: cannot read it ({type(e).__name__}: {e})") from None
    try:
        result = json.loads(text)
    except json.JSONDecodeError as e:
        raise RaymetaError(f"{where}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise RaymetaError(f"{where}: not a `raymeta speed --output` file (no list of rows)")
    try:
        fitted = fit_from_result(result)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RaymetaError(f"{where}: not a `raymeta speed --output` file ({type(e).__name__}: {e})") from None
    if not fitted.rows:
        raise RaymetaError(f"{where}: no measured steps to fit (no row has a reduce mode with step_ms)")
    return fitted


def projection_report(fitted: FitResult | None = None, *, source: str | None = None,
                      tokens_per_task_step: float = PROJECTION_TOKENS) -> str:
    """What ``raymeta speed --project`` prints: the fit (when given), the projection table, where the driver form
    stops scaling, and what ``meta.reduce: auto`` picks for a few setups."""
    c = fitted.constants if fitted is not None else MEASURED
    source = source or ("MEASURED: fitted on benchmarks/speed_overlap.json, RESULTS.md §13.1" if fitted is None else "this fit")
    out = [format_fit(fitted), ""] if fitted is not None else []
    out += [f"BERT-base meta-step projected with one task actor per GPU (N = GPUs), {tokens_per_task_step:g} tokens "
            f"per task and step, first-order (6·P·tokens full, 4·P·tokens LoRA r=8 on P = 85M non-embedding "
            f"parameters), MFU {A100.mfu:.0%} of the dense bf16 peak; the driver's and this machine's fixed costs "
            f"from the constants ({source}); step ms with overlap unless marked.", "",
            format_projection(project(c, tokens_per_task_step=tokens_per_task_step)), ""]
    out += ["Where the driver form stops scaling (overlap on): the smallest N with step / compute > 1.10, and with "
            "step > 1.10 × the step at N = 1 (None: not up to 4096).", "",
            "| model | actors on | trainable | tokens/task | link Gb/s | step/compute at N=1 | step/compute > 1.10 "
            "from N | step > 1.10 × step(N=1) from N |", "|---|---|---|---|---|---|---|---|"]
    cases = [("BERT-base", A100, "full", BERT_BASE_PARAMS, BERT_BASE_PARAMS, BERT_BASE_FLOP_PARAMS, tokens_per_task_step),
             ("BERT-base", A100, "lora", BERT_BASE_PARAMS, BERT_BASE_LORA_PARAMS, BERT_BASE_FLOP_PARAMS,
              tokens_per_task_step),
             ("BERT-base", H100, "lora", BERT_BASE_PARAMS, BERT_BASE_LORA_PARAMS, BERT_BASE_FLOP_PARAMS,
              tokens_per_task_step),
             ("MiniLM-L6", CPU_CORE, "full", MINILM_ALL_PARAMS, MINILM_PARAMS, MINILM_ALL_PARAMS, 512)]
    for model, dev, trainable, params, tparams, fparams, tokens in cases:
        for gbps in (1, 25, 100, 400):
            if dev is not CPU_CORE and gbps == 1:
                continue
            limits = [driver_limit(c, params=params, flop_params=fparams, trainable_params=tparams, link=gbps,
                                   device=dev, tokens_per_task_step=tokens, basis=b) for b in ("compute", "one_task")]
            one = step_time("driver", 1, 4.0 * tparams, tparams, dev.compute_s(task_flops(tokens, fparams, min(
                tparams, fparams))), c, True, Link(gbps), spread_s=0.0).step_over_compute
            out.append(f"| {model} | {dev.name} | {trainable} | {tokens:g} | {gbps:g} | {one:.2f} | {limits[0]} | "
                       f"{limits[1]} |")
    bert = int(BERT_BASE_PARAMS)
    examples = [
        ("MiniLM, 8 tasks, one machine (local Ray)", dict(n_actors=8, shared_numel=MINILM_PARAMS,
                                                          total_numel=MINILM_ALL_PARAMS, tokens_per_task_step=512,
                                                          local=True)),
        ("BERT-base, 64 A100, 100 Gb/s, combine: pcgrad", dict(n_actors=64, shared_numel=bert, total_numel=bert,
                                                                tokens_per_task_step=tokens_per_task_step, local=False,
                                                                combine="pcgrad", device=A100, link_gbps=100)),
        ("BERT-base, one task on a cluster", dict(n_actors=1, shared_numel=bert, total_numel=bert,
                                                  tokens_per_task_step=tokens_per_task_step, local=False, device=A100)),
        ("BERT-base full, 64 A100, 100 Gb/s", dict(n_actors=64, shared_numel=bert, total_numel=bert,
                                                   tokens_per_task_step=tokens_per_task_step, local=False, device=A100,
                                                   link_gbps=100)),
        ("BERT-base LoRA, 8 A100, 25 Gb/s", dict(n_actors=8, shared_numel=BERT_BASE_LORA_PARAMS, total_numel=bert,
                                                 tokens_per_task_step=tokens_per_task_step, local=False, device=A100,
                                                 link_gbps=25)),
        ("MiniLM full, 4 CPU nodes (a core per task), 25 Gb/s", dict(n_actors=4, shared_numel=MINILM_PARAMS,
                                                                      total_numel=MINILM_ALL_PARAMS,
                                                                      tokens_per_task_step=512, local=False)),
        ("MiniLM LoRA, 4 CPU nodes (a core per task), 25 Gb/s", dict(n_actors=4, shared_numel=331_776,
                                                                      total_numel=MINILM_ALL_PARAMS,
                                                                      tokens_per_task_step=512, local=False)),
    ]
    out += ["", "What `meta.reduce: auto` picks (raymeta.core.costmodel.default_reduce):", "",
            "| setup | meta.reduce | why |", "|---|---|---|"]
    for name, kw in examples:
        mode, why = default_reduce(**kw, c=c)
        out.append(f"| {name} | {mode} | {why} |")
    return "\n".join(out)
