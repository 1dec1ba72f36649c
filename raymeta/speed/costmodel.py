"""A cost model of the meta-step in both reduce forms, fitted on ``raymeta speed`` rows and
projected to GPU clusters.

benchmarks/results/overlap-cost-model.md quotes its fit and its projection; ``raymeta speed
--project`` prints them (the tables: :mod:`raymeta.speed.report`). Pure Python and numpy (no
torch, no Ray). The step itself (:func:`step_time`, :class:`CostConstants`, the devices,
:data:`MEASURED`) and what ``meta.reduce: auto`` picks by it (:func:`default_reduce`, called by the
trainer before any actor starts) live in :mod:`raymeta.core.reduce_choice`, so that training needs
none of this analysis; they are re-exported here.

**The step.** A meta-step is the slowest task actor's compute ``C`` plus what runs in series around
it:

- ``reduce: driver``: *publish* (the driver's ``ray.put`` of the float32 parameters and an actor's
  load), *transfer* (each task gradient back to the driver: its copy into the actor's object store,
  the driver's read), *reduce* (one pass over the N gradients: the weighted sum Σ wᵢ gᵢ and the
  task-affinity Gram matrix, whose row for gradient i reads the i earlier ones again, N(N+1)/2
  gradient reads in all) and the *outer* AdamW step, all on the driver;
- ``reduce: collective``: the ring *all-reduce* among the actors (every rank sends and receives
  2(N−1)/N of the gradient buffer, in 2(N−1) hops) and the *outer* step, on every rank at once.

Every term is affine in the bytes, the number of tasks N and their products
(:class:`CostConstants`); :func:`fit` fits each from its own measured column of ``raymeta speed``
(not from the step time alone) and reports how well the sum predicts each measured step.

**Overlap** (``meta.overlap``; :func:`step_time` documents each assumption): the driver adds each
gradient as soon as every earlier one has arrived, so only the last arrival's share of the reduction
stays in series when the arrivals are spread out; the collective form all-reduces gradient buckets
(``meta.bucket_mb``) from autograd hooks during the backward pass, taken as 2/3 of the compute (the
6·P·tokens rule: forward 2, backward 4), so what stays in series is the last bucket, or the
all-reduce beyond the backward pass when the link is too slow to keep up.

**One machine and a cluster.** The constants describe this machine: Ray's object store, gloo over
loopback and a CPU driver. With ``cores`` (the CPUs the actors share), N actors on fewer cores run
their collective outer steps and the ring's byte traffic ``N / cores`` times slower, as they did on
the 2-CPU VM of benchmarks/results/throughput.md. On a :class:`Link` (one task actor per GPU, one
GPU per node), the driver's network card sends the parameters to N actors and receives N gradients
one after another (N·bytes / bandwidth each way), the all-reduce moves 2(N−1)/N·bytes per rank at
the link's bandwidth with its per-hop latency (ring, or NCCL's tree where that is faster), and the
collective outer step runs on each GPU (memory-bound, :data:`ADAM_BYTES_PER_PARAM`); the driver's
reduction and outer step keep this CPU's fitted costs (a faster driver CPU makes them smaller:
conservative for the driver form), and so do the fixed costs of a step (Ray's round trips), measured
on a loaded 2-CPU VM: at GPU compute times of 5-30 ms they weigh on both forms.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from ..core.reduce_choice import (
    A100,
    ADAM_BYTES_PER_PARAM,
    BACKWARD_FRACTION,
    BUCKET_BYTES,
    CPU_CORE,
    H100,
    MEASURED,
    MODES,
    CostConstants,
    Device,
    Link,
    Mode,
    StepBreakdown,
    cores_share,
    default_reduce,
    every_mode,
    parse_mode,
    step_time,
    task_flops,
)

__all__ = [
    "MODES", "BUCKET_BYTES", "BACKWARD_FRACTION", "ADAM_BYTES_PER_PARAM", "BERT_BASE_PARAMS",
    "BERT_BASE_FLOP_PARAMS", "BERT_BASE_LORA_PARAMS", "BERT_BASE_LORA_QV_PARAMS",
    "PROJECTION_TOKENS", "MINILM_PARAMS", "MINILM_ALL_PARAMS", "CostConstants", "Link", "Device",
    "A100", "H100", "CPU_CORE", "StepBreakdown", "FitResult", "MEASURED", "parse_mode",
    "task_flops", "step_time", "summary_of", "fit", "predict", "fit_from_result", "load_fit",
    "project", "driver_limit", "default_reduce",
]

# BERT-base (bert-base-uncased): 109.5M parameters with the pooler; 85.05M outside the embeddings
# (12 layers of 7,087,872), which are the ones a token's matmuls touch: FLOPs use those, bytes use
# all of them
BERT_BASE_PARAMS = 110e6
BERT_BASE_FLOP_PARAMS = 85_054_464
# LoRA r = 8 on BERT-base. raymeta's default targets for BERT (raymeta/core/trainable.py): query,
# key, value and every dense (attention output, intermediate, output): 12 · 8 · (3·1536 + 1536 +
# 3840 + 3840) = 1,327,104 (MiniLM-L6: 331,776, as measured in
# benchmarks/results/lora.md#what-lora-saves-per-meta-step). The LoRA paper's query + value only: 12
# · 2 · 8 · 1536 = 294,912.
BERT_BASE_LORA_PARAMS = 1_327_104
BERT_BASE_LORA_QV_PARAMS = 294_912
# tokens per task and meta-step in the projection: a 5-way episode of 5 + 5 shots × 128 tokens, the
# size of the GPU bundle's compute probe (benchmarks/results/gpu.md); the 8 × 64 tokens of
# benchmarks/results/throughput.md would leave a GPU mostly idle
PROJECTION_TOKENS = 6400
# MiniLM-L6's trainable parameters in raymeta (the pooler is not used),
# benchmarks/results/throughput.md
MINILM_PARAMS = 22_565_376
MINILM_ALL_PARAMS = 22_713_216


def summary_of(bd: StepBreakdown) -> dict[str, Any]:
    """The per-mode summary ``raymeta speed`` would measure for this step (its keys and units: ms),
    e.g. to test :func:`fit` on rows of known constants."""
    out: dict[str, Any] = {"step_ms": 1e3 * bd.step_s, "compute_ms": 1e3 * bd.compute_s,
                           "outer_ms": 1e3 * bd.outer_s,
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
    "transfer": ("transfer_fixed_s", "transfer_s_per_task", "transfer_s_per_byte",
                 "transfer_s_per_byte_task"),
    "reduce": ("reduce_fixed_s", "reduce_s_per_byte", "reduce_s_per_byte_pair"),
    "outer": ("outer_fixed_s", "outer_s_per_param"),
    "allreduce": ("allreduce_fixed_s", "allreduce_s_per_hop", "allreduce_s_per_byte"),
}
_FLOOR_S = 1e-4  # relative weights: a term measured below 0.1 ms weighs as 0.1 ms


@dataclass
class FitResult:
    """:func:`fit`'s constants, how each component was fitted, and each measured step against its
    prediction."""

    constants: CostConstants
    cores: float | None
    # name -> observations, rank of its design, whether the prior filled in
    components: dict[str, dict[str, Any]]
    # model, tasks, trainable, mode, measured_ms, predicted_ms, error (relative)
    rows: list[dict[str, Any]]
    max_abs_error: float
    median_abs_error: float

    def to_dict(self) -> dict[str, Any]:
        return {"constants": self.constants.to_dict(), "cores": self.cores,
                "components": self.components,
                "rows": self.rows, "max_abs_error": self.max_abs_error,
                "median_abs_error": self.median_abs_error}


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
    if (base == "driver" and m.get("bytes_counted") == "measured"
            and m.get("bytes_per_actor") is not None):
        grad = float(m["bytes_per_actor"]) - 4.0 * params  # what was returned (bfloat16: half)
    return params, grad


def _ms(m: Mapping[str, Any], *keys: str) -> float | None:
    vals = [m.get(k) for k in keys]
    if any(v is None or not math.isfinite(float(v)) for v in vals):
        return None
    return sum(float(v) for v in vals) / 1e3


def _observations(rows: Sequence[Mapping[str, Any]],
                  cores: float | None) -> dict[str, list[tuple[list[float], float]]]:
    """Per component, (features, measured seconds): the rows' own columns for that term."""
    obs: dict[str, list[tuple[list[float], float]]] = {k: [] for k in _COMPONENTS}
    for row in rows:
        n = int(row["tasks"])
        for _, base, overlap, m in _row_modes(row):
            params, grad = _sizes(row, base, m)
            pbytes, share = 4.0 * params, cores_share(n, cores)
            if (y := _ms(m, "outer_ms")) is not None:
                obs["outer"].append(([1.0, params] if base == "driver" else [share, share * params],
                                     y))
            if base == "driver":
                if (y := _ms(m, "publish_ms", "load_ms")) is not None:
                    obs["publish"].append(([1.0, pbytes, float(n)], y))
                # the reduction of the earlier gradients runs inside the wait: neither column is
                # clean
                if overlap:
                    continue
                if (y := _ms(m, "transfer_ms")) is not None:
                    obs["transfer"].append(([1.0, float(n), grad, n * grad], y))
                if (y := _ms(m, "reduce_ms")) is not None:
                    obs["reduce"].append(([1.0, n * pbytes, n * (n + 1) / 2 * pbytes], y))
            elif not overlap and (y := _ms(m, "allreduce_ms")) is not None:
                obs["allreduce"].append(([1.0, 2.0 * (n - 1), 2 * (n - 1) / n * grad * share], y))
    return obs


def _solve(x: np.ndarray, y: np.ndarray, prior: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Least squares for the ``free`` columns (the others at zero), each row weighted by 1/|y|
    (relative error). Where the rows cannot tell constants apart, the prior's are changed least in
    relative terms (the minimum-norm correction in units of each prior constant): a term that is
    small in these rows (a per-byte cost, measured on one small model) keeps about its prior value,
    and the terms the rows do show absorb the difference."""
    w = 1.0 / np.maximum(np.abs(y), _FLOOR_S)
    theta = np.where(free, prior, 0.0)
    a = x[:, free] * w[:, None]
    if a.size == 0:
        return theta
    norms = np.linalg.norm(a, axis=0)
    # a constant without a prior: a change of one column norm
    unit = 1.0 / np.where(norms > 0, norms, 1.0)
    scale = np.where(prior[free] > 0, prior[free], unit)
    resid = (y - x @ theta) * w
    delta, *_ = np.linalg.lstsq(a * scale, resid, rcond=1e-10)
    theta[free] += delta * scale
    return theta


def _fit_component(obs: list[tuple[list[float], float]],
                   prior: np.ndarray) -> tuple[np.ndarray, int]:
    """Non-negative weighted least squares over every subset of the constants (a handful: exact
    NNLS), nearest the prior where the rows cannot tell the constants apart. Returns the constants
    and the design's rank."""
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
    """Fit :class:`CostConstants` to ``raymeta speed`` result rows (``result["rows"]``: any models,
    N and modes of :data:`MODES`; a mode's ``"overlap"`` key, where present, overrides what its
    name says), then predict each row's step from its measured compute.

    Each component is fitted from its own column: publish + load (driver rows) against bytes and N,
    transfer against N, bytes and N·bytes, reduce against N·bytes and N(N+1)/2·bytes, outer against
    parameters (driver rows, and collective rows times the ``cores`` share), all-reduce against hops
    and ring bytes. Transfer, reduce and all-reduce come from ``:no-overlap`` rows only (with
    overlap their work is inside the compute or the wait); a component no row measures keeps
    ``prior``'s constants (default :data:`MEASURED`), and where the rows cannot separate constants
    (one model size cannot tell a fixed cost from a per-byte one) the prior's change least, in
    relative terms (:func:`_solve`). Least squares of the relative error, constants ≥ 0. ``cores``:
    the CPUs the rows' actors shared (``result["machine"]["affinity"]``)."""
    prior = MEASURED if prior is None else prior
    values = prior.to_dict()
    components: dict[str, dict[str, Any]] = {}
    for name, obs in _observations(rows, cores).items():
        keys = _COMPONENTS[name]
        if not obs:
            components[name] = {"observations": 0, "rank": 0, "constants": len(keys),
                                "from_prior": True}
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


def predict(rows: Sequence[Mapping[str, Any]], c: CostConstants, *,
            cores: float | None = None) -> list[dict[str, Any]]:
    """Each measured step of ``rows`` (every mode of every row) against :func:`step_time`'s
    prediction from its measured compute: model, tasks, trainable, algorithm, mode, overlap,
    measured_ms, predicted_ms, compute_ms and the relative error (predicted − measured) /
    measured."""
    preds: list[dict[str, Any]] = []
    for row in rows:
        n = int(row["tasks"])
        for key, base, overlap, m in _row_modes(row):
            params, grad = _sizes(row, base, m)
            compute = float(m["compute_ms"]) / 1e3
            measured = float(m["step_ms"])
            predicted = 1e3 * step_time(base, n, grad, params, compute, c, overlap,
                                        cores=cores).step_s
            preds.append({"model": row.get("model"), "tasks": n,
                          "trainable": row.get("trainable", "full"),
                          "algorithm": row.get("algorithm"), "mode": key, "overlap": overlap,
                          "measured_ms": measured, "predicted_ms": predicted,
                          "compute_ms": 1e3 * compute,
                          "error": (predicted - measured) / measured if measured > 0 else math.nan})
    return preds


def fit_from_result(result: Mapping[str, Any], prior: CostConstants | None = None) -> FitResult:
    """:func:`fit` of a ``raymeta speed`` result (its JSON): its rows, on the CPUs its machine gave
    the actors."""
    m = result.get("machine") or {}
    cores = m.get("affinity") or m.get("cpus")
    return fit(result["rows"], cores=float(cores) if cores else None, prior=prior)


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
        raise RaymetaError(f"{where}: not a `raymeta speed --output` file "
                           f"({type(e).__name__}: {e})") from None
    if not fitted.rows:
        raise RaymetaError(f"{where}: no measured steps to fit (no row has a reduce mode with "
                           "step_ms)")
    return fitted


# -------------------------------------------------------------------------------------- projection


def project(c: CostConstants = MEASURED, *, model: str = "BERT-base",
            model_params: float = BERT_BASE_PARAMS,
            flop_params: float = BERT_BASE_FLOP_PARAMS, lora_params: float = BERT_BASE_LORA_PARAMS,
            gpus: Sequence[int] = (8, 64, 256), devices: Sequence[Device] = (A100, H100),
            links: Sequence[float | Link] = (25, 100, 400),
            trainables: Sequence[str] = ("full", "lora"),
            tokens_per_task_step: float = PROJECTION_TOKENS, bucket_bytes: float = BUCKET_BYTES,
            spread_s: float | None = 0.0) -> list[dict[str, Any]]:
    """The meta-step of ``model`` with one task actor per GPU (N = GPUs), in every mode, per device,
    trainable mode, GPU count and link: one row each, with the compute, every mode's step and step /
    compute, and the faster form (with overlap).

    Compute per task: :func:`task_flops` (6·P·tokens full, ≈ 4·P·tokens LoRA, P the non-embedding
    parameters) / (peak · MFU): first-order algorithms; second-order MAML costs more, which only
    makes the exchange a smaller share. Full: every parameter trains and travels (``model_params``);
    LoRA: ``lora_params`` (r = 8, raymeta's default targets). ``spread_s=0``: the tasks cost the
    same on identical GPUs, so they finish together and the driver's overlap hides only behind its
    own card's one-after-another arrivals."""
    rows = []
    for device in devices:
        for trainable in trainables:
            if trainable not in ("full", "lora"):
                raise ValueError(f"project: trainable must be 'full' or 'lora', got '{trainable}'")
            tparams = model_params if trainable == "full" else lora_params
            # FLOPs: the non-embedding parameters, all of whose weight gradients a full model
            # computes
            compute = device.compute_s(task_flops(tokens_per_task_step, flop_params,
                                                  flop_params if trainable == "full" else tparams))
            for n in gpus:
                for lk in links:
                    link = lk if isinstance(lk, Link) else Link(float(lk))
                    case = every_mode(c, n, tparams, compute, device, link,
                                      bucket_bytes=bucket_bytes, spread_s=spread_s)
                    d, co = case["driver"], case["collective"]
                    rows.append({
                        "model": model, "device": device.name, "mfu": device.mfu,
                        "trainable": trainable,
                        "trainable_params": tparams, "gpus": n, "link_gbps": link.gbps,
                        "tokens_per_task_step": tokens_per_task_step,
                        "compute_ms": 1e3 * d.compute_s,
                        **{f"{mode}_ms": 1e3 * bd.step_s for mode, bd in case.items()},
                        **{f"{mode}_over_compute": bd.step_over_compute
                           for mode, bd in case.items()},
                        "faster": "driver" if d.step_s <= co.step_s else "collective",
                        "breakdown": {mode: bd.to_dict() for mode, bd in case.items()},
                    })
    return rows


def driver_limit(c: CostConstants = MEASURED, *, params: float = BERT_BASE_PARAMS,
                 flop_params: float = BERT_BASE_FLOP_PARAMS, trainable_params: float | None = None,
                 link: Link | float = 100.0, device: Device = A100,
                 tokens_per_task_step: float = PROJECTION_TOKENS,
                 threshold: float = 1.10, basis: Literal["compute", "one_task"] = "compute",
                 overlap: bool = True,
                 max_n: int = 4096, spread_s: float | None = 0.0) -> int | None:
    """The smallest N at which the driver form's step exceeds ``threshold`` × its ``basis``: where
    the driver reduce stops scaling. ``basis="compute"``: the task's compute (step / compute > 1.10:
    the exchange costs more than 10% on top); ``"one_task"``: the step with one task (weak scaling:
    adding tasks is no longer free, whatever the fixed cost per step). 1: not even one task stays
    under it (``"compute"`` only); None: it scales up to ``max_n``. Every serial term grows with N
    and the compute does not, so the ratio grows with N: one bisection.

    ``params`` are the model's parameters, ``trainable_params`` those that train and travel
    (default: all); the compute is :func:`task_flops` of ``flop_params`` on ``device``."""
    link = link if isinstance(link, Link) else Link(float(link))
    tparams = params if trainable_params is None else trainable_params
    compute = device.compute_s(task_flops(tokens_per_task_step, flop_params,
                                          min(tparams, flop_params)))

    def step(n: int) -> float:
        return step_time("driver", n, 4.0 * tparams, tparams, compute, c, overlap, link,
                         spread_s=spread_s).step_s

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
