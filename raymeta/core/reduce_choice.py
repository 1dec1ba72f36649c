"""What ``meta.reduce: auto`` picks (:func:`default_reduce`), and the meta-step model it picks by.

A meta-step is the slowest task actor's compute plus what runs in series around it, in either reduce
form (:func:`step_time`, term by term; :class:`CostConstants`: the fitted seconds per unit of each
term, :data:`MEASURED` those of the 2-CPU VM of
benchmarks/results/overlap-cost-model.md#overlap-on-and-off-side-by-side). The trainer calls
:func:`default_reduce` before any actor starts; the analysis around the same model (the fit to
``raymeta speed`` rows, the projection to GPU clusters, the tables) is
:mod:`raymeta.speed.costmodel`, which imports this module. Pure Python: no numpy, torch or Ray.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

__all__ = [
    "MODES", "BUCKET_BYTES", "BACKWARD_FRACTION", "ADAM_BYTES_PER_PARAM", "Mode", "parse_mode",
    "CostConstants", "Link", "Device", "A100", "H100", "CPU_CORE", "task_flops", "StepBreakdown",
    "cores_share", "step_time", "MEASURED", "every_mode", "default_reduce",
]

# `raymeta speed --reduce` modes: the reduce form, with overlap unless ":no-overlap"
MODES = ("driver", "collective", "driver:no-overlap", "collective:no-overlap")
BUCKET_BYTES = 25 * 2**20  # meta.bucket_mb's default (DDP's bucket_cap_mb)
BACKWARD_FRACTION = 2 / 3  # of a task's compute: backward 4·P·tokens of the 6·P·tokens
# fused AdamW per float32 parameter: reads param, grad, exp_avg, exp_avg_sq (16 B), writes three (12
# B); clipping's norm reads the gradient once more (4 B)
ADAM_BYTES_PER_PARAM = 32

Mode = Literal["driver", "collective"]


def parse_mode(mode: str) -> tuple[Mode, bool]:
    """``"collective:no-overlap"`` → ``("collective", False)``; ``"driver"`` → ``("driver",
    True)``."""
    base, _, suffix = mode.partition(":")
    if base not in ("driver", "collective") or suffix not in ("", "no-overlap"):
        raise ValueError(f"unknown reduce mode '{mode}' (known: {', '.join(MODES)})")
    return base, suffix != "no-overlap"  # type: ignore[return-value]


# -----------------------------------------------------------------------------------------
# constants, links, devices


@dataclass(frozen=True)
class CostConstants:
    """Seconds per unit of each term of the step, on the machine they were fitted on (see the module
    docstring).

    ``B`` below is bytes: the float32 parameters (4 per parameter) for publish and reduce, the
    gradient as it travels (``meta.transfer_dtype``) for transfer and the all-reduce; ``N`` is the
    number of task actors, ``P`` parameters. A task's compute is an input of :func:`step_time`, not
    a constant."""

    # driver: publish = fixed + per_byte·B + per_task·N (ray.put, then each actor's load: one remote
    # call each)
    publish_fixed_s: float = 0.0
    publish_s_per_byte: float = 0.0
    publish_s_per_task: float = 0.0
    # driver: transfer = fixed + per_task·N + per_byte·B (one gradient into its actor's store, in
    # parallel)
    #                    + per_byte_task·N·B (the driver reads the N gradients one after another)
    transfer_fixed_s: float = 0.0
    transfer_s_per_task: float = 0.0
    transfer_s_per_byte: float = 0.0
    transfer_s_per_byte_task: float = 0.0
    # driver: reduce = fixed + per_byte·N·B (the weighted sum) + per_byte_pair·N(N+1)/2·B (the Gram
    # matrix)
    reduce_fixed_s: float = 0.0
    reduce_s_per_byte: float = 0.0
    reduce_s_per_byte_pair: float = 0.0
    # outer AdamW step (clipping and the scheduler included) = fixed + per_param·P: the driver's, or
    # each rank's
    outer_fixed_s: float = 0.0
    outer_s_per_param: float = 0.0
    # collective: all-reduce = fixed (the step's Ray round trip, the finiteness vote) +
    # per_hop·2(N−1)
    #                          + per_byte·2(N−1)/N·B (ring)
    allreduce_fixed_s: float = 0.0
    allreduce_s_per_hop: float = 0.0
    allreduce_s_per_byte: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostConstants:
        return cls(**{f.name: float(data[f.name]) for f in dataclasses.fields(cls)
                      if f.name in data})


@dataclass(frozen=True)
class Link:
    """The network between nodes: ``gbps`` gigabits per second each way per node, ``latency_s`` per
    message (one hop of the ring; 10 µs: RDMA-class, TCP is nearer 50 µs)."""

    gbps: float
    latency_s: float = 10e-6

    @property
    def bytes_per_s(self) -> float:
        return self.gbps * 1e9 / 8

    def __str__(self) -> str:
        return f"{self.gbps:g} Gb/s"


@dataclass(frozen=True)
class Device:
    """What runs one task actor: ``peak_flops`` (dense bf16 for a GPU) at ``mfu`` model-FLOP
    utilisation, and ``mem_bw`` (bytes/s) for a memory-bound outer step on the device (None: the
    fitted CPU outer step)."""

    name: str
    peak_flops: float
    mfu: float = 0.40
    mem_bw: float | None = None

    def compute_s(self, flops: float) -> float:
        return flops / (self.peak_flops * self.mfu)


# datasheets: dense bf16 tensor-core peak (no sparsity), HBM bandwidth (A100 SXM 80 GB, H100 SXM)
A100 = Device("A100", 312e12, 0.40, 2.039e12)
H100 = Device("H100", 989e12, 0.40, 3.35e12)
# one actor on one core of the 2-CPU VM of benchmarks/results/throughput.md: MiniLM (22.6M
# parameters) at 8 × 64 tokens took 0.64 s per task
# (benchmarks/results/throughput.md#the-target-case-again-minilm-two-tasks, driver), 6 · 22.6M · 512
# FLOPs: ~1.1e11 FLOP/s as 6·P·tokens counts them, embeddings included
CPU_CORE = Device("CPU core (benchmarks/results/throughput.md VM)", 1.1e11, 1.0, None)


def task_flops(tokens: float, params: float, trainable: float | None = None) -> float:
    """One task's forward and backward: 2·P·tokens forward, 2·P·tokens for the activations'
    gradients (every layer, frozen or not, passes them down) and 2·T·tokens for the trainable
    weights' gradients: 6·P·tokens when everything trains, ≈ 4·P·tokens for LoRA. A second-order
    MAML inner loop costs more (a backward through the inner steps)."""
    t = params if trainable is None else min(trainable, params)
    return tokens * (4.0 * params + 2.0 * t)


# ----------------------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class StepBreakdown:
    """One meta-step, term by term (seconds). Each term is the part in series with the compute;
    ``hidden`` holds the part of a term that ran under the compute (not in ``step_s``), and
    ``overlapped`` names those terms."""

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
        return {**dataclasses.asdict(self), "overlapped": list(self.overlapped),
                "serial_s": self.serial_s,
                "step_s": self.step_s, "step_over_compute": self.step_over_compute}


def cores_share(n: int, cores: float | None) -> float:
    """How much slower each of ``n`` ranks runs on ``cores`` shared CPUs (None: one core each)."""
    return max(1.0, n / cores) if cores else 1.0


def _allreduce_call(n: int, nbytes: float, c: CostConstants, link: Link | None,
                    share: float) -> float:
    """One all-reduce of ``nbytes`` among ``n`` ranks. One machine (gloo): a ring, 2(N−1) hops
    moving 2(N−1)/N of the bytes through every rank, at the fitted per-hop and per-byte costs
    (``share``: N ranks on fewer cores). On a link (NCCL): the faster of that ring at the link's
    latency and bandwidth and a double binary tree (2·⌈log₂ N⌉ hops, about 2 bytes moved per byte),
    as NCCL picks per call: at 256 ranks a flat ring's 510 hops would cost each 25 MB bucket 5 ms of
    latency alone."""
    if n <= 1:
        return 0.0
    ring_bytes = 2 * (n - 1) / n * nbytes
    if link is None:
        return 2 * (n - 1) * c.allreduce_s_per_hop + ring_bytes * c.allreduce_s_per_byte * share
    ring = 2 * (n - 1) * link.latency_s + ring_bytes / link.bytes_per_s
    tree = 2 * math.ceil(math.log2(n)) * link.latency_s + 2 * nbytes / link.bytes_per_s
    return min(ring, tree)


def step_time(mode: Mode, n: int, grad_bytes: float, params: float, compute_s: float,
              c: CostConstants,
              overlap: bool, link: Link | None = None, *, cores: float | None = None,
              device: Device | None = None,
              bucket_bytes: float = BUCKET_BYTES, backward_fraction: float = BACKWARD_FRACTION,
              spread_s: float | None = None) -> StepBreakdown:
    """The meta-step of ``n`` task actors, ``params`` trainable parameters and ``grad_bytes`` per
    task gradient.

    ``compute_s``: the slowest actor's compute. ``link``: None for one machine (the constants
    alone), else actors on separate nodes joined by it. ``cores``: on one machine, the CPUs the
    actors share (None: one each). ``device``: with a ``mem_bw``, the collective form's outer step
    runs on it.

    Assumptions, term by term:

    - driver, publish and transfer: in series with the compute (every actor needs the parameters
      first; the tasks cost the same, so their gradients arrive together). On a link the driver's
      card sends N copies of the parameters and receives N gradients, one after another (Ray fetches
      each object from its owner's node).
    - driver, reduce with overlap: gradient i is added (its sum, its Gram row) as soon as it and
      every earlier one have arrived. ``spread_s`` is how far apart the actors finish: None assumes
      far enough that all but the last arrival's share hides behind the slower actors (what the
      trainer's ``RunningReduce`` aims at); on a link the card's one-after-another arrivals spread
      them by (N−1)·bytes / bandwidth more. In series stays the larger of the last share and the
      reduction beyond that spread.
    - collective with overlap: buckets of ``bucket_bytes`` are all-reduced in order as the backward
      pass (``backward_fraction`` of the compute) produces them; the last bucket is ready only when
      it ends, so in series stays the larger of the last bucket's all-reduce and the whole
      all-reduce beyond the backward pass. Each bucket pays its own latency (hops;
      :func:`_allreduce_call`), so with many buckets, many ranks and a short backward pass overlap
      could lose to one all-reduce after the compute. Without overlap: one all-reduce of the whole
      buffer after the compute.
    - collective outer step: every rank at once, in parallel (``cores``: N/cores times the one-rank
      time).
    """
    if mode not in ("driver", "collective"):
        raise ValueError(f"step_time: mode must be 'driver' or 'collective', got '{mode}'")
    if n < 1:
        raise ValueError(f"step_time: n must be at least 1, got {n}")
    share = cores_share(n, cores)
    pbytes = 4.0 * params  # float32 parameters: what is published, and what the driver reduces in
    hidden: dict[str, float] = {}
    if mode == "driver":
        publish = c.publish_fixed_s + c.publish_s_per_byte * pbytes + c.publish_s_per_task * n
        transfer = (c.transfer_fixed_s + c.transfer_s_per_task * n
                    + c.transfer_s_per_byte * grad_bytes
                    + c.transfer_s_per_byte_task * n * grad_bytes)
        if link is not None:
            publish += link.latency_s + n * pbytes / link.bytes_per_s
            transfer += link.latency_s + n * grad_bytes / link.bytes_per_s
        total = (c.reduce_s_per_byte * n * pbytes
                 + c.reduce_s_per_byte_pair * n * (n + 1) / 2 * pbytes)
        exposed = total
        if overlap and n > 1:
            # gradient N: sum, Gram row
            last = c.reduce_s_per_byte * pbytes + c.reduce_s_per_byte_pair * n * pbytes
            window = math.inf if spread_s is None else spread_s
            if link is not None:
                window += (n - 1) * grad_bytes / link.bytes_per_s
            exposed = max(last, total - window)
            hidden["reduce"] = total - exposed
        outer = c.outer_fixed_s + c.outer_s_per_param * params
        return StepBreakdown("driver", n, overlap, compute_s, publish_s=publish,
                             transfer_s=transfer,
                             reduce_s=c.reduce_fixed_s + exposed, outer_s=outer, hidden=hidden)
    if overlap and n > 1:
        buckets = max(1, math.ceil(grad_bytes / bucket_bytes))
        last_bytes = grad_bytes - (buckets - 1) * bucket_bytes
        whole = ((buckets - 1) * _allreduce_call(n, bucket_bytes, c, link, share)
                 + _allreduce_call(n, last_bytes, c, link, share))
        last = _allreduce_call(n, last_bytes, c, link, share)
        exposed = max(last, whole - backward_fraction * compute_s)
        hidden["allreduce"] = whole - exposed
    else:
        exposed = _allreduce_call(n, grad_bytes, c, link, share)
    if device is not None and device.mem_bw:
        outer = c.outer_fixed_s + ADAM_BYTES_PER_PARAM * params / device.mem_bw
    else:
        outer = (c.outer_fixed_s + c.outer_s_per_param * params) * share
    return StepBreakdown("collective", n, overlap, compute_s,
                         allreduce_s=c.allreduce_fixed_s + exposed, outer_s=outer,
                         hidden=hidden)


# ----------------------------------------------------------------------------------------- the
# fitted constants

# Fitted by `raymeta speed --project --fit-from benchmarks/speed_overlap.json` (cores = 2) on the 40
# rows of that run (benchmarks/results/overlap-cost-model.md#overlap-on-and-off-side-by-side,
# 2026-12-05, the 2-CPU shared VM: MiniLM-L6 and the tiny BERT, N = 1, 2, 4, 8, 16, every reduce
# mode with and without overlap; |error| median 4.1%, max 13.6%). Refit from a newer or another
# machine's run the same way; this comment then names it. (tests/unit/test_costmodel.py's
# SECTION_5_1 holds the rows of an older run, benchmarks/results/throughput.md#full-run, which
# fitted within a median 2.2% too.)
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


# ----------------------------------------------------------------------------------------- the
# choice


def every_mode(c: CostConstants, n: int, trainable_params: float, compute_s: float, device: Device,
               link: Link, *, bucket_bytes: float,
               spread_s: float | None) -> dict[str, StepBreakdown]:
    """Every mode of one cluster setup: ``n`` task actors, one per ``device``, float32 gradients."""
    out = {}
    for mode in MODES:
        base, overlap = parse_mode(mode)
        out[mode] = step_time(base, n, 4.0 * trainable_params, trainable_params, compute_s, c,
                              overlap, link,
                              device=device, bucket_bytes=bucket_bytes, spread_s=spread_s)
    return out


def default_reduce(n_actors: int, shared_numel: int, total_numel: int, tokens_per_task_step: float,
                   *, local: bool,
                   combine: str = "mean", device: Device | None = None,
                   compute_s: float | None = None,
                   link_gbps: float = 25.0, flop_numel: int | None = None,
                   c: CostConstants = MEASURED) -> tuple[Mode, str]:
    """``meta.reduce: auto``: ``("driver" | "collective", the reason in one line)``.

    In order: ``combine: pcgrad`` → driver (it needs every task gradient in one place); one actor →
    driver; ``local`` (one machine, a local Ray instance) → driver (its transfers are memory copies;
    benchmarks/results/throughput.md#full-run measured the driver no slower than the collective at
    every N on one machine). Otherwise both forms are projected with overlap (:func:`step_time` on a
    ``link_gbps`` link, the tasks finishing together), the compute per task being ``compute_s`` if
    given, else :func:`task_flops` of ``flop_numel`` (default ``total_numel``: the embeddings
    counted too, which overstates the compute) and ``shared_numel`` on ``device`` (default
    :data:`CPU_CORE`: actors without a GPU), and collective is chosen only when its step is at least
    5% shorter: a tie goes to the driver, which also gives the task-affinity (Gram) matrix."""
    if combine == "pcgrad":
        return "driver", "meta.combine: pcgrad needs every task gradient in one place"
    if n_actors <= 1:
        return "driver", "one task actor: there is nothing to all-reduce"
    if local:
        return "driver", ("one machine: its transfers are memory copies, and the driver form was "
                          "no slower than the collective at any N there "
                          "(benchmarks/results/throughput.md#full-run, "
                          "benchmarks/results/overlap-cost-model.md#overlap-on-and-off-side-by-side)")
    dev = device or CPU_CORE
    compute = compute_s if compute_s is not None else dev.compute_s(
        task_flops(tokens_per_task_step, flop_numel or total_numel, shared_numel))
    link = Link(link_gbps)
    case = every_mode(c, n_actors, shared_numel, compute, dev, link, bucket_bytes=BUCKET_BYTES,
                      spread_s=0.0)
    d, co = case["driver"].step_s, case["collective"].step_s
    where = (f"{n_actors} actors on {dev.name}, {link_gbps:g} Gb/s, {shared_numel:,} trainable "
             "parameters")
    if co <= 0.95 * d:
        return "collective", (f"projected step {1e3 * co:.1f} ms collective vs {1e3 * d:.1f} ms "
                              f"driver ({where})")
    return "driver", (f"projected step {1e3 * d:.1f} ms driver vs {1e3 * co:.1f} ms collective: "
                      f"collective not 5% faster ({where})")
