"""``raymeta speed``: where a meta-step's time goes, and what distribution costs against the
alternatives.

For every model and number of tasks N, the real trainer (``MetaTrainer`` + ``TaskActor``) runs
in both reduce modes on one set of actors (driver mode first, then the same actors form the
process group), each with ``meta.overlap`` (``driver``, ``collective``) and, when asked, without
(``driver:no-overlap``, ``collective:no-overlap``), and in the same run the two alternatives do the
same work (:mod:`raymeta.speed.baselines`): (a) one process, all cores (and one thread), tasks in
turn; (b) Ray Train's ``TorchTrainer``, DDP on gloo. The workload
(benchmarks/results/throughput.md): N copies of ``bbc_news`` under distinct names (own head, own
seeded episodes, identical cost per task), multitask gradient, 8 sequences × 64 tokens per task and
step.

Reported per case, as medians over the steps after warm-up: the step split into parameter
publication (driver ``ray.put`` + the slowest actor's load), actor compute (the slowest
actor's ``compute_s``), serialisation and transfer (the wait beyond the slowest actor's
load + compute), reduction and outer step; ratios step / compute, raymeta / (a), raymeta / (b),
bytes moved per actor per step / shared-parameter bytes; driver peak RSS (``VmHWM``), its
drift over the steps, and the object store's peak use. After the cases, the cost model
(:mod:`raymeta.speed.costmodel`) is fitted to the rows: its constants and each step's prediction
(``result["cost_model"]``). The targets' verdicts and the tables are :mod:`raymeta.speed.report`'s.
``--project`` prints the model's projection to GPU clusters instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ..arglists import names, positive_ints
from ..cluster import connect
from ..config import ExperimentConfig, load_config
from ..core.jsonio import dumps as strict_dumps
from ..core.model import OFFLINE_MINILM
from ..train.record import StepRecord
from .baselines import run_ddp, run_reference
from .costmodel import MODES, fit_from_result, parse_mode
from .report import check_targets, format_table

__all__ = ["TINY_BERT", "MODELS", "BenchSettings", "quick_settings", "bench_config", "run_bench",
           "gradient_mismatches", "settings_from_args", "run_from_args", "ordered_modes"]

# The shipped tiny config's model (configs/tiny.yaml), which the test suite uses too: one
# definition.
_TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
TINY_BERT: dict[str, Any] = yaml.safe_load(_TINY_YAML.read_text())["model"]["from_config"]
MODELS: dict[str, dict[str, Any]] = {"tiny": {"from_config": TINY_BERT},
                                     "minilm": {"name_or_path": OFFLINE_MINILM}}


@dataclasses.dataclass
class BenchSettings:
    """What to measure. Defaults are the full run; :func:`quick_settings` is the CI one."""

    models: list[str] = dataclasses.field(default_factory=lambda: ["minilm", "tiny"])
    tasks: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16])
    # reduce modes (raymeta.speed.costmodel.MODES): driver, collective (meta.overlap on),
    # driver:no-overlap, collective:no-overlap; the driver ones run first, then the same actors form
    # the process group
    reduce: list[str] = dataclasses.field(default_factory=lambda: ["driver", "collective"])
    steps: int = 5  # timed steps per case, after the warm-up
    warmup: int = 2
    # meta-algorithms, each a row of its own on the same (model, N, trainable), side by side; the
    # benchmarks/results/throughput.md#targets targets read the first one's rows
    algorithms: list[str] = dataclasses.field(default_factory=lambda: ["multitask"])
    # meta.weighting.rule, each a row of its own on the same (model, N, trainable, algorithm): what
    # learning the mixture costs per step (alignment: one target task, chatterbot_topics_val, at the
    # workload's episode size)
    weighting: list[str] = dataclasses.field(default_factory=lambda: ["fixed"])
    reference: bool = True  # (a)
    ddp_tasks: list[int] | None = None  # (b) at these N (None: every N; []: never)
    transfer_dtype: str = "float32"
    torch_threads: int | None = None  # actors' torch threads (None: their CPU share)
    seed: int = 0
    # model.trainable modes, each a row of its own on the same (model, N): what a frozen encoder
    # saves
    trainable: list[str] = dataclasses.field(default_factory=lambda: ["full"])
    extra: list[str] = dataclasses.field(default_factory=list)  # key=value config overrides

    def ddp_at(self, n: int) -> bool:
        return self.ddp_tasks is None or n in self.ddp_tasks


def quick_settings() -> BenchSettings:
    """CI: the tiny model, N ∈ {1, 2, 4}, both reduce modes, (a) everywhere, (b) at N = 2 (a
    TorchTrainer takes ~40 s to start and stop here, so one is all three minutes allow)."""
    return BenchSettings(models=["tiny"], tasks=[1, 2, 4], steps=5, warmup=1, ddp_tasks=[2],
                         trainable=["full", "lora"])


# r = 8 (the schema's default)
TRAINABLE: dict[str, dict[str, Any]] = {"full": {}, "lora": {"trainable": "lora"},
                                         "top_layers": {"trainable": "top_layers", "top_layers": 1}}


def bench_config(model: str, n: int, s: BenchSettings, output_dir: str, trainable: str = "full",
                 algorithm: str | None = None, weighting: str = "fixed") -> ExperimentConfig:
    """N copies of bbc_news (distinct names: own head and episode stream), 8 × 64 tokens each,
    meta-trained by ``algorithm`` (default: the first of ``s.algorithms``); ``metaopt:svm`` is
    ``metaopt`` with its SVM head (``meta.metaopt.head``; the iterations are
    ``meta.metaopt.iterations``, else 50)."""
    if model not in MODELS:
        from ..errors import RaymetaError

        raise RaymetaError(f"bench: unknown model '{model}' (known: {', '.join(MODELS)})")
    if trainable not in TRAINABLE:
        from ..errors import RaymetaError

        raise RaymetaError(f"bench: unknown trainable mode '{trainable}' (known: "
                           f"{', '.join(TRAINABLE)})")
    algorithm, _, head = (algorithm or s.algorithms[0]).partition(":")
    overrides = [f"meta.transfer_dtype={s.transfer_dtype}"] if s.transfer_dtype != "float32" else []
    if head:
        overrides += [f"meta.metaopt.head={head}"] + (["meta.metaopt.iterations=50"]
                                                      if head == "svm" else [])
    if s.torch_threads:
        overrides.append(f"resources.torch_threads={s.torch_threads}")
    if weighting not in ("fixed", "alignment"):
        from ..errors import RaymetaError

        raise RaymetaError(f"bench: unknown weighting rule '{weighting}' (known: fixed, alignment)")
    learned = {"rule": "alignment", "target": [{"use": "chatterbot_topics_val"}], "shots": [2]} \
        if weighting == "alignment" else {}
    return load_config(data={
        "name": f"bench-{model}-{n}", "seed": s.seed, "output_dir": output_dir,
                             "model": {**MODELS[model], **TRAINABLE[trainable]},
        "tasks": [{"use": "bbc_news", "name": f"bbc_news_{i}", "max_length": 64} for i in range(n)],
        # the run starts in driver form (not meta.reduce: auto's choice); use_collective() switches
        # the same actors
        "meta": {"algorithm": algorithm, "steps": s.warmup + s.steps, "inner_steps": 1,
                 "reduce": "driver",
                 "episode": {"ways": 2, "shots": 2, "queries": 2, "support_size": 4,
                             "query_size": 4},
                 "weighting": learned},
        "optim": {"warmup_steps": 0}, "checkpoint": {"every_steps": 10**6},
    }, overrides=overrides + list(s.extra))  # the user's overrides last: they win


# ----------------------------------------------------------------------------------------- memory


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _store_bytes_used() -> int | None:
    """Bytes in the object store now (all nodes), from the raylet's store stats; None where
    unavailable."""
    try:
        from ray._private import state
        from ray._private.internal_api import get_memory_info_reply

        return int(get_memory_info_reply(state.state).store_stats.object_store_bytes_used)
    except Exception:  # private API: a figure we cannot read is reported as missing, not guessed
        return None


class MemoryWatch:
    """Driver RSS and object-store use over one phase: ``VmHWM`` (reset at the start where Linux
    allows) for the driver's peak, one sampling thread for the store, ``RssAnon`` after each step
    for drift."""

    def __init__(self, store_interval_s: float = 0.2):
        self.interval = store_interval_s
        self.store_peak: int | None = None
        self.rss_after_step: list[float] = []
        self._stop = threading.Event()

    def __enter__(self) -> MemoryWatch:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            used = _store_bytes_used()
            if used is not None:
                self.store_peak = max(self.store_peak or 0, used)

    def step_done(self) -> None:
        # RssAnon: the driver's own memory. VmRSS also counts the object-store pages it has mapped
        # (the gradients it read), which grows until it has touched the whole store arena, and is
        # not a leak.
        rss = _status_kb("RssAnon")
        if rss is not None:
            self.rss_after_step.append(rss / 1024)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = _status_kb("VmHWM")
        self.peak_rss_mb = hwm / 1024 if hwm is not None else max(self.rss_after_step,
                                                                  default=float("nan"))


# ----------------------------------------------------------------------------------------- raymeta


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _slope(ys: list[float]) -> float:
    """Least-squares slope per step (MB/step): a flat driver has ~0."""
    n = len(ys)
    if n < 2:
        return float("nan")
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


def summarise(records: list[StepRecord], mode: str, n: int, shared_bytes: int,
              total_bytes: int | None = None) -> dict[str, Any]:
    """Medians of one mode's timed steps; every component in ms, bytes as a multiple of the shared
    (trainable) parameters and of all the encoder's parameters (``total_bytes``: frozen ones
    included)."""
    step = [r.step_s for r in records]
    compute = [r.compute_max_s for r in records]
    out: dict[str, Any] = {
        "steps": len(records), "step_ms": 1e3 * _med(step), "compute_ms": 1e3 * _med(compute),
        "step_over_compute": _med([a / b for a, b in zip(step, compute)]),
        "overhead_ms": 1e3 * _med([a - b for a, b in zip(step, compute)]),
    }
    out["overhead_ms_per_task"] = out["overhead_ms"] / n
    if mode.split(":")[0] == "driver":  # driver:no-overlap too
        span = [max((r.load_s or {}).get(t, 0.0) + c for t,
                    c in r.compute_s.items()) for r in records]
        out.update({
            "publish_ms": 1e3 * _med([r.publish_s for r in records]),
            "load_ms": 1e3 * _med([max((r.load_s or {"": 0.0}).values()) for r in records]),
            "transfer_ms": 1e3 * _med([r.wait_s - s for r, s in zip(records, span)]),
            "reduce_ms": 1e3 * _med([r.reduce_s for r in records]),
            "outer_ms": 1e3 * _med([r.outer_s for r in records]),
        })
        # real byte counts: the array published (each actor reads it) and the arrays returned
        if records[-1].publish_bytes is not None:
            per_actor = [r.publish_bytes + sum(r.grad_bytes.values()) / len(r.grad_bytes)
                         for r in records]
            out["bytes_per_actor"], out["bytes_counted"] = _med(per_actor), "measured"
        else:  # a trainer without the byte fields: float32 both ways
            out["bytes_per_actor"], out["bytes_counted"] = 2.0 * shared_bytes, "layout"
    else:
        out.update({
            "allreduce_ms": 1e3 * _med([r.step_s - r.compute_max_s - r.outer_s for r in records]),
            "outer_ms": 1e3 * _med([r.outer_s for r in records]),
            # ring all-reduce: each rank sends (and receives) 2(N-1)/N of the buffer; nothing is
            # published
            "bytes_per_actor": 2 * (n - 1) / n * shared_bytes,
                    "bytes_counted": "ring model of the gradient buffer",
        })
    out["bytes_ratio"] = out["bytes_per_actor"] / shared_bytes
    out["bytes_vs_all_params"] = out["bytes_per_actor"] / (total_bytes or shared_bytes)
    raw = ("step_s", "compute_max_s", "publish_s", "wait_s", "reduce_s", "outer_s", "allreduce_s")
    out["per_step_ms"] = {k: [round(1e3 * getattr(r, k), 2) for r in records] for k in raw
                          if getattr(records[0], k) is not None}
    if records[0].load_s is not None:
        out["per_step_ms"]["load_max"] = [round(1e3 * max(r.load_s.values()), 2) for r in records]
    return out


def ordered_modes(modes: list[str]) -> list[str]:
    """The driver modes first (in their given order), then the collective ones: the actors form the
    process group once, after the driver modes."""
    return sorted(modes, key=lambda m: parse_mode(m)[0] != "driver")


def run_raymeta(cfg: ExperimentConfig, s: BenchSettings, started: bool) -> dict[str, Any]:
    """Every reduce mode on one set of actors: the driver modes, then the same actors form the group
    for the collective ones; ``meta.overlap`` set before each mode's steps."""
    from ..train.trainer import MetaTrainer

    trainer = MetaTrainer(cfg)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    trainer.setup(local=started)  # what MetaTrainer.run() does before its first step
    out["start_s"] = time.perf_counter() - t0
    n, nbytes = len(trainer.actors), trainer.state.layout.nbytes
    # float32 bytes of every encoder parameter
    total = 4 * sum(p.numel() for p in trainer.state.encoder.parameters())
    out.update(shared_numel=trainer.state.layout.numel, shared_bytes=nbytes, encoder_bytes=total)
    try:
        for mode in ordered_modes(s.reduce):
            base, overlap = parse_mode(mode)
            if base == "collective" and not trainer.collective:
                trainer.use_collective()
            trainer.set_overlap(overlap)
            records = []
            with MemoryWatch() as mem:
                for i in range(s.warmup + s.steps):
                    # in the reducer's form: use_collective() switched it
                    records.append(trainer.meta_step())
                    # the run's step 0: what (a), (b) compute
                    if base == "driver" and i == 0 and "grad0" not in out:
                        out["grad0"] = trainer.last_meta_grad.clone()
                    mem.step_done()
            timed = mem.rss_after_step[s.warmup:]
            out[mode] = {**summarise(records[s.warmup:], mode, n, nbytes, total),
                         "overlap": overlap,
                         "peak_rss_mb": mem.peak_rss_mb,
                         "rss_drift_mb_per_step": _slope(timed), "rss_mb": timed,
                         "store_peak_mb": None if mem.store_peak is None
                         else mem.store_peak / 2**20}
    finally:
        trainer.shutdown()
    return out


# ----------------------------------------------------------------------------------------- the run


def _rel(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def run_case(model: str, n: int, s: BenchSettings, started: bool, workdir: Path,
             trainable: str = "full",
             algorithm: str | None = None, weighting: str = "fixed") -> dict[str, Any]:
    """One (model, N, trainable, algorithm): raymeta in both modes, then (a) and (b) on the same
    config, one after another. The baselines run for ``full`` only: they compare distribution costs
    at equal work, which the full rows measure; the other modes' rows sit beside those for what a
    frozen encoder saves."""
    import ray

    algorithm = algorithm or s.algorithms[0]
    name = f"{model}-n{n}-{trainable}-{algorithm.replace(':', '-')}-{weighting}"
    cfg = bench_config(model, n, s, str(workdir / name), trainable, algorithm, weighting)
    total = float(ray.cluster_resources().get("CPU", 1))
    row: dict[str, Any] = {"model": model, "tasks": n, "trainable": trainable,
                           "algorithm": algorithm,
                           "weighting": weighting}
    # (a), (b): equal work, the fixed mixture's
    baselines = trainable == "full" and weighting == "fixed"
    rm = run_raymeta(cfg, s, started)
    grad0 = rm.pop("grad0", None)
    row.update(rm)
    if s.reference and baselines:
        # (a) as benchmarks/results/throughput.md defines it, with every core; and with one thread,
        # which on a loaded machine (two OpenMP threads stall on every small op when the other CPU
        # is busy) can be the faster one
        for key, threads in (("reference", max(1, int(total))), ("reference_1t", 1)):
            if key == "reference_1t" and int(total) <= 1:
                continue
            ref = run_reference(cfg, s.warmup + s.steps, threads=threads)
            row[key] = {"step_ms": 1e3 * _med(ref["step_s"][s.warmup:]), "threads": ref["threads"],
                        "grad0_rel_err": _rel(ref["grad0"], grad0)}
    if s.ddp_at(n) and baselines:
        share = max(0.01, math.floor(total / n * 100) / 100)
        ddp = run_ddp(cfg, s.warmup + s.steps, share)
        row["ddp"] = {"step_ms": 1e3 * _med(ddp["step_s"][s.warmup:]), "threads": ddp["threads"],
                      "fit_s": ddp["fit_s"],
                      "grad0_rel_err": _rel(ddp["grad0"], grad0)}
    for mode in s.reduce:
        m = row[mode]
        for key in ("reference", "reference_1t"):
            if key in row:
                m[f"vs_{key}"] = m["step_ms"] / row[key]["step_ms"]
        if "ddp" in row:
            m["vs_ddp"] = m["step_ms"] / row["ddp"]["step_ms"]
    return row


def machine() -> dict[str, Any]:
    import ray

    return {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "gpu": torch.cuda.is_available()}


def run_bench(s: BenchSettings, output: Path | None = None) -> dict[str, Any]:
    """Every (model, N) case of ``s``; the result dict (also written to ``output`` as JSON)."""
    from rich.console import Console

    console = Console(stderr=True)
    t0 = time.perf_counter()
    started = connect()
    result: dict[str, Any] = {"settings": dataclasses.asdict(s), "machine": machine(), "rows": []}
    try:
        with tempfile.TemporaryDirectory(prefix="raymeta-bench-") as d:
            for model in s.models:
                for n in s.tasks:
                    # side by side: the same machine load for every mode
                    for trainable in s.trainable:
                        for alg in s.algorithms:
                            for rule in s.weighting:
                                console.log(f"bench: {model}, {n} task(s), trainable {trainable}, "
                                            f"{alg}, {rule}")
                                result["rows"].append(run_case(model, n, s, started, Path(d),
                                                               trainable, alg, rule))
                    if output is not None:  # partial results survive an interrupted long run
                        _write(result, output)
    finally:
        if started:
            import ray

            ray.shutdown()
    result["wall_s"] = time.perf_counter() - t0
    result["targets"] = check_targets(result)
    # benchmarks/results/overlap-cost-model.md: the constants, each step predicted
    result["cost_model"] = fit_from_result(result).to_dict()
    if output is not None:
        _write(result, output)
    return result


def _write(result: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(strict_dumps(result, indent=1, default=float))


# ------------------------------------------------------------------------------------- entry points


def settings_from_args(args: Any) -> BenchSettings:
    s = quick_settings() if args.quick else BenchSettings()
    if args.models:
        s.models = names(args.models)
    if args.tasks:
        s.tasks = positive_ints(args.tasks)
    if args.reduce:
        s.reduce = names(args.reduce)
        if not s.reduce or any(m not in MODES for m in s.reduce):
            from ..errors import RaymetaError

            raise RaymetaError(f"--reduce {args.reduce}: expected one or more of "
                               f"{', '.join(MODES)}, comma-separated")
    if getattr(args, "trainable", None):
        s.trainable = names(args.trainable)
    if getattr(args, "algorithms", None):
        s.algorithms = names(args.algorithms)
    if getattr(args, "weighting", None):
        s.weighting = names(args.weighting)
    for key in ("steps", "warmup", "transfer_dtype", "torch_threads"):
        if getattr(args, key) is not None:
            setattr(s, key, getattr(args, key))
    if args.ddp_tasks:
        s.ddp_tasks = [] if args.ddp_tasks == "none" else positive_ints(args.ddp_tasks)
    s.reference = not args.no_reference
    s.extra = list(args.overrides)
    return s


GRAD_TOLERANCE = 1e-5  # relative: (a) and (b) compute the trainer's step-0 meta-gradient


def gradient_mismatches(result: dict[str, Any]) -> list[str]:
    """Cases where (a) or (b) did not reproduce the trainer's meta-gradient (float32 transfer
    only)."""
    if result["settings"]["transfer_dtype"] != "float32":
        return []
    bad = []
    for r in result["rows"]:
        for alt in ("reference", "reference_1t", "ddp"):
            err = r.get(alt, {}).get("grad0_rel_err")
            if err is not None and not err <= GRAD_TOLERANCE:
                bad.append(f"{r['model']} N={r['tasks']} {alt}: relative error {err:.1e}")
    return bad


def run_from_args(args: Any) -> int:
    """Run, print the table and the targets, write JSON. Timing targets are reported, never failed
    on; a baseline that computes a different gradient (a broken comparison) exits 1."""
    output = Path(args.output) if args.output else None
    result = run_bench(settings_from_args(args), output)
    print(format_table(result))
    print(f"\n{len(result['rows'])} case(s) in {result['wall_s']:.0f} s" + (f"; wrote {output}"
                                                                            if output else ""))
    bad = gradient_mismatches(result)
    for line in bad:
        print(f"raymeta: error: bench: not the same work: {line} (> {GRAD_TOLERANCE:g})")
    return 1 if bad else 0
