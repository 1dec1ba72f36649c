"""``raymeta speed``: where a meta-step's time goes, and what distribution costs against the alternatives.

For every model and number of tasks N, the real trainer (``MetaTrainer`` + ``TaskActor``) runs
in both reduce modes on one set of actors (driver mode first, then the same actors form the
process group), each with ``meta.overlap`` (``driver``, ``collective``) and, when asked, without
(``driver:no-overlap``, ``collective:no-overlap``), and in the same run the two alternatives do the same work
(:mod:`raymeta.speed.baselines`): (a) one process, all cores (and one thread), tasks in turn; (b) Ray Train's
``TorchTrainer``, DDP on gloo. The workload (benchmarks/RESULTS.md §5): N copies of ``bbc_news``
under distinct names (own head, own seeded episodes, identical cost per task), multitask
gradient, 8 sequences × 64 tokens per task and step.

Reported per case, as medians over the steps after warm-up: the step split into parameter
publication (driver ``ray.put`` + the slowest actor's load), actor compute (the slowest
actor's ``compute_s``), serialisation and transfer (the wait beyond the slowest actor's
load + compute), reduction and outer step; ratios step / compute, raymeta / (a), raymeta / (b),
bytes moved per actor per step / shared-parameter bytes; driver peak RSS (``VmHWM``), its
drift over the steps, and the object store's peak use. After the cases, the cost model
(:mod:`raymeta.core.costmodel`) is fitted to the rows: its constants and each step's prediction
(``result["cost_model"]``). ``--project`` prints the model's projection to GPU clusters instead.
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
from ..config import ExperimentConfig, load_config
from ..core.costmodel import MODES, fit_from_result, format_fit, parse_mode
from ..core.jsonio import dumps as strict_dumps
from ..core.model import OFFLINE_MINILM
from ..runtime import connect
from ..train.record import StepRecord
from .baselines import run_ddp, run_reference

__all__ = ["TINY_BERT", "MODELS", "BenchSettings", "quick_settings", "bench_config", "run_bench", "check_targets", "format_table",
           "gradient_mismatches", "settings_from_args", "run_from_args", "ordered_modes"]

# The shipped tiny config's model (configs/tiny.yaml), which the test suite uses too: one definition.
TINY_BERT: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text()
                                           )["model"]["from_config"]
MODELS: dict[str, dict[str, Any]] = {"tiny": {"from_config": TINY_BERT}, "minilm": {"name_or_path": OFFLINE_MINILM}}
TARGETS = {"step_over_compute": 1.05, "vs_reference": 1.0, "vs_ddp": 1.0, "overhead_ms_per_task": 5.0, "bytes_ratio": 2.0,
           "lora_step_over_compute": 1.03, "lora_bytes_fall": 50.0,
           # RESULTS.md §13: meta.overlap
           "collective_overlap_step_over_compute": 1.08, "driver_overlap_serial_fall": 0.30}


@dataclasses.dataclass
class BenchSettings:
    """What to measure. Defaults are the full run; :func:`quick_settings` is the CI one."""

    models: list[str] = dataclasses.field(default_factory=lambda: ["minilm", "tiny"])
    tasks: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16])
    # reduce modes (raymeta.core.costmodel.MODES): driver, collective (meta.overlap on), driver:no-overlap,
    # collective:no-overlap; the driver ones run first, then the same actors form the process group
    reduce: list[str] = dataclasses.field(default_factory=lambda: ["driver", "collective"])
    steps: int = 5  # timed steps per case, after the warm-up
    warmup: int = 2
    # meta-algorithms, each a row of its own on the same (model, N, trainable), side by side; the §5.4 targets
    # read the first one's rows
    algorithms: list[str] = dataclasses.field(default_factory=lambda: ["multitask"])
    # meta.weighting.rule, each a row of its own on the same (model, N, trainable, algorithm): what learning the
    # mixture costs per step (alignment: one target task, chatterbot_topics_val, at the workload's episode size)
    weighting: list[str] = dataclasses.field(default_factory=lambda: ["fixed"])
    reference: bool = True  # (a)
    ddp_tasks: list[int] | None = None  # (b) at these N (None: every N; []: never)
    transfer_dtype: str = "float32"
    torch_threads: int | None = None  # actors' torch threads (None: their CPU share)
    seed: int = 0
    # model.trainable modes, each a row of its own on the same (model, N): what a frozen encoder saves
    trainable: list[str] = dataclasses.field(default_factory=lambda: ["full"])
    extra: list[str] = dataclasses.field(default_factory=list)  # key=value config overrides

    def ddp_at(self, n: int) -> bool:
        return self.ddp_tasks is None or n in self.ddp_tasks


def quick_settings() -> BenchSettings:
    """CI: the tiny model, N ∈ {1, 2, 4}, both reduce modes, (a) everywhere, (b) at N = 2 (a
    TorchTrainer takes ~40 s to start and stop here, so one is all three minutes allow)."""
    return BenchSettings(models=["tiny"], tasks=[1, 2, 4], steps=5, warmup=1, ddp_tasks=[2], trainable=["full", "lora"])


TRAINABLE: dict[str, dict[str, Any]] = {"full": {}, "lora": {"trainable": "lora"},  # r = 8 (the schema's default)
                                         "top_layers": {"trainable": "top_layers", "top_layers": 1}}


def bench_config(model: str, n: int, s: BenchSettings, output_dir: str, trainable: str = "full",
                 algorithm: str | None = None, weighting: str = "fixed") -> ExperimentConfig:
    """N copies of bbc_news (distinct names: own head and episode stream), 8 × 64 tokens each, meta-trained by
    ``algorithm`` (default: the first of ``s.algorithms``); ``metaopt:svm`` is ``metaopt`` with its SVM head
    (``meta.metaopt.head``; the iterations are ``meta.metaopt.iterations``, else 50)."""
    if model not in MODELS:
        from ..errors import RaymetaError

        raise RaymetaError(f"bench: unknown model '{model}' (known: {', '.join(MODELS)})")
    if trainable not in TRAINABLE:
        from ..errors import RaymetaError

        raise RaymetaError(f"bench: unknown trainable mode '{trainable}' (known: {', '.join(TRAINABLE)})")
    algorithm, _, head = (algorithm or s.algorithms[0]).partition(":")
    overrides = [f"meta.transfer_dtype={s.transfer_dtype}"] if s.transfer_dtype != "float32" else []
    if head:
        overrides += [f"meta.metaopt.head={head}"] + (["meta.metaopt.iterations=50"] if head == "svm" else [])
    if s.torch_threads:
        overrides.append(f"resources.torch_threads={s.torch_threads}")
    if weighting not in ("fixed", "alignment"):
        from ..errors import RaymetaError

        raise RaymetaError(f"bench: unknown weighting rule '{weighting}' (known: fixed, alignment)")
    learned = {"rule": "alignment", "target": [{"use": "chatterbot_topics_val"}], "shots": [2]} \
        if weighting == "alignment" else {}
    return load_config(data={
        "name": f"bench-{model}-{n}", "seed": s.seed, "output_dir": output_dir, "model": {**MODELS[model], **TRAINABLE[trainable]},
        "tasks": [{"use": "bbc_news", "name": f"bbc_news_{i}", "max_length": 64} for i in range(n)],
        # the run starts in driver form (not meta.reduce: auto's choice); use_collective() switches the same actors
        "meta": {"algorithm": algorithm, "steps": s.warmup + s.steps, "inner_steps": 1, "reduce": "driver",
                 "episode": {"ways": 2, "shots": 2, "queries": 2, "support_size": 4, "query_size": 4},
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
    """Bytes in the object store now (all nodes), from the raylet's store stats; None where unavailable."""
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
        # RssAnon: the driver's own memory. VmRSS also counts the object-store pages it has mapped (the
        # gradients it read), which grows until it has touched the whole store arena, and is not a leak.
        rss = _status_kb("RssAnon")
        if rss is not None:
            self.rss_after_step.append(rss / 1024)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = _status_kb("VmHWM")
        self.peak_rss_mb = hwm / 1024 if hwm is not None else max(self.rss_after_step, default=float("nan"))


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


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b·x: (a, b)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def summarise(records: list[StepRecord], mode: str, n: int, shared_bytes: int,
              total_bytes: int | None = None) -> dict[str, Any]:
    """Medians of one mode's timed steps; every component in ms, bytes as a multiple of the shared (trainable)
    parameters and of all the encoder's parameters (``total_bytes``: frozen ones included)."""
    step = [r.step_s for r in records]
    compute = [r.compute_max_s for r in records]
    out: dict[str, Any] = {
        "steps": len(records), "step_ms": 1e3 * _med(step), "compute_ms": 1e3 * _med(compute),
        "step_over_compute": _med([a / b for a, b in zip(step, compute)]),
        "overhead_ms": 1e3 * _med([a - b for a, b in zip(step, compute)]),
    }
    out["overhead_ms_per_task"] = out["overhead_ms"] / n
    if mode.split(":")[0] == "driver":  # driver:no-overlap too
        span = [max((r.load_s or {}).get(t, 0.0) + c for t, c in r.compute_s.items()) for r in records]
        out.update({
            "publish_ms": 1e3 * _med([r.publish_s for r in records]),
            "load_ms": 1e3 * _med([max((r.load_s or {"": 0.0}).values()) for r in records]),
            "transfer_ms": 1e3 * _med([r.wait_s - s for r, s in zip(records, span)]),
            "reduce_ms": 1e3 * _med([r.reduce_s for r in records]),
            "outer_ms": 1e3 * _med([r.outer_s for r in records]),
        })
        # real byte counts: the array published (each actor reads it) and the arrays returned
        if records[-1].publish_bytes is not None:
            per_actor = [r.publish_bytes + sum(r.grad_bytes.values()) / len(r.grad_bytes) for r in records]
            out["bytes_per_actor"], out["bytes_counted"] = _med(per_actor), "measured"
        else:  # a trainer without the byte fields: float32 both ways
            out["bytes_per_actor"], out["bytes_counted"] = 2.0 * shared_bytes, "layout"
    else:
        out.update({
            "allreduce_ms": 1e3 * _med([r.step_s - r.compute_max_s - r.outer_s for r in records]),
            "outer_ms": 1e3 * _med([r.outer_s for r in records]),
            # ring all-reduce: each rank sends (and receives) 2(N-1)/N of the buffer; nothing is published
            "bytes_per_actor": 2 * (n - 1) / n * shared_bytes, "bytes_counted": "ring model of the gradient buffer",
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
    """The driver modes first (in their given order), then the collective ones: the actors form the process group
    once, after the driver modes."""
    return sorted(modes, key=lambda m: parse_mode(m)[0] != "driver")


def run_raymeta(cfg: ExperimentConfig, s: BenchSettings, started: bool) -> dict[str, Any]:
    """Every reduce mode on one set of actors: the driver modes, then the same actors form the group for the
    collective ones; ``meta.overlap`` set before each mode's steps."""
    from ..train.trainer import MetaTrainer

    trainer = MetaTrainer(cfg)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    trainer.setup(local=started)  # what MetaTrainer.run() does before its first step
    out["start_s"] = time.perf_counter() - t0
    n, nbytes = len(trainer.actors), trainer.layout.nbytes
    total = 4 * sum(p.numel() for p in trainer.encoder.parameters())  # float32 bytes of every encoder parameter
    out.update(shared_numel=trainer.layout.numel, shared_bytes=nbytes, encoder_bytes=total)
    try:
        for mode in ordered_modes(s.reduce):
            base, overlap = parse_mode(mode)
            if base == "collective" and not trainer.collective:
                trainer.use_collective()
            trainer.set_overlap(overlap)
            records = []
            with MemoryWatch() as mem:
                for i in range(s.warmup + s.steps):
                    records.append(trainer.meta_step())  # in the reducer's form: use_collective() switched it
                    if base == "driver" and i == 0 and "grad0" not in out:  # the run's step 0: what (a), (b) compute
                        out["grad0"] = trainer.last_meta_grad.clone()
                    mem.step_done()
            timed = mem.rss_after_step[s.warmup:]
            out[mode] = {**summarise(records[s.warmup:], mode, n, nbytes, total), "overlap": overlap,
                         "peak_rss_mb": mem.peak_rss_mb,
                         "rss_drift_mb_per_step": _slope(timed), "rss_mb": timed,
                         "store_peak_mb": None if mem.store_peak is None else mem.store_peak / 2**20}
    finally:
        trainer.shutdown()
    return out


# ----------------------------------------------------------------------------------------- the run


def _rel(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def run_case(model: str, n: int, s: BenchSettings, started: bool, workdir: Path, trainable: str = "full",
             algorithm: str | None = None, weighting: str = "fixed") -> dict[str, Any]:
    """One (model, N, trainable, algorithm): raymeta in both modes, then (a) and (b) on the same config, one after another.
    The baselines run for ``full`` only: they compare distribution costs at equal work, which the full rows
    measure; the other modes' rows sit beside those for what a frozen encoder saves."""
    import ray

    algorithm = algorithm or s.algorithms[0]
    cfg = bench_config(model, n, s, str(workdir / f"{model}-n{n}-{trainable}-{algorithm.replace(':', '-')}-{weighting}"),
                       trainable, algorithm, weighting)
    total = float(ray.cluster_resources().get("CPU", 1))
    row: dict[str, Any] = {"model": model, "tasks": n, "trainable": trainable, "algorithm": algorithm,
                           "weighting": weighting}
    baselines = trainable == "full" and weighting == "fixed"  # (a), (b): equal work, the fixed mixture's
    rm = run_raymeta(cfg, s, started)
    grad0 = rm.pop("grad0", None)
    row.update(rm)
    if s.reference and baselines:
        # (a) as benchmarks/RESULTS.md §5 defines it, with every core; and with one thread, which on a loaded machine
        # (two OpenMP threads stall on every small op when the other CPU is busy) can be the faster one
        for key, threads in (("reference", max(1, int(total))), ("reference_1t", 1)):
            if key == "reference_1t" and int(total) <= 1:
                continue
            ref = run_reference(cfg, s.warmup + s.steps, threads=threads)
            row[key] = {"step_ms": 1e3 * _med(ref["step_s"][s.warmup:]), "threads": ref["threads"],
                        "grad0_rel_err": _rel(ref["grad0"], grad0)}
    if s.ddp_at(n) and baselines:
        share = max(0.01, math.floor(total / n * 100) / 100)
        ddp = run_ddp(cfg, s.warmup + s.steps, share)
        row["ddp"] = {"step_ms": 1e3 * _med(ddp["step_s"][s.warmup:]), "threads": ddp["threads"], "fit_s": ddp["fit_s"],
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

    return {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
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
                    for trainable in s.trainable:  # side by side: the same machine load for every mode
                        for alg in s.algorithms:
                            for rule in s.weighting:
                                console.log(f"bench: {model}, {n} task(s), trainable {trainable}, {alg}, {rule}")
                                result["rows"].append(run_case(model, n, s, started, Path(d), trainable, alg, rule))
                    if output is not None:  # partial results survive an interrupted long run
                        _write(result, output)
    finally:
        if started:
            import ray

            ray.shutdown()
    result["wall_s"] = time.perf_counter() - t0
    result["targets"] = check_targets(result)
    result["cost_model"] = fit_from_result(result).to_dict()  # RESULTS.md §13: the constants, each step predicted
    if output is not None:
        _write(result, output)
    return result


def _write(result: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(strict_dumps(result, indent=1, default=float))


# ----------------------------------------------------------------------------------------- verdicts


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of benchmarks/RESULTS.md §5.4 (and §6.2 for LoRA), each with the measured figure and
    met / not met (None: not measured here)."""
    first = result["settings"].get("algorithms", ["multitask"])[0]
    mine = [r for r in result["rows"] if r.get("algorithm", first) == first and r.get("weighting", "fixed") == "fixed"]
    rows = {(r["model"], r["tasks"]): r for r in mine if r.get("trainable", "full") == "full"}
    lora = {(r["model"], r["tasks"]): r for r in mine if r.get("trainable") == "lora"}
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, where: str, at_least: bool = False) -> None:
        ok = None if value is None or not math.isfinite(value) else (value >= limit if at_least else value <= limit)
        out.append({"target": name, "where": where, "value": value, "limit": limit, "met": ok,
                    "at_least": at_least})

    for mode in result["settings"]["reduce"]:
        r = rows.get(("minilm", 2), {}).get(mode)
        add("step / slowest-actor compute", r and r["step_over_compute"], TARGETS["step_over_compute"], f"minilm N=2 {mode}")
        add("raymeta / (a) sequential", r and r.get("vs_reference"), TARGETS["vs_reference"], f"minilm N=2 {mode}")
        add("raymeta / (b) DDP", r and r.get("vs_ddp"), TARGETS["vs_ddp"], f"minilm N=2 {mode}")
        tiny = {k[1]: rows[k][mode] for k in sorted(rows) if k[0] == "tiny" and mode in rows[k]}
        if len(tiny) > 1:  # overhead(N) ≈ fixed + slope·N: linear growth, and the slope is the cost per task
            ns = sorted(tiny)
            fit = _fit([float(n) for n in ns], [tiny[n]["overhead_ms"] for n in ns])
            add("tiny: overhead per added task, least-squares slope (ms)", fit[1], TARGETS["overhead_ms_per_task"],
                f"tiny {mode}, N={','.join(map(str, ns))}; fixed part {fit[0]:.1f} ms")
            worst = max(ns, key=lambda n: tiny[n]["overhead_ms_per_task"])
            add("tiny: overhead / N, worst N (ms)", tiny[worst]["overhead_ms_per_task"], TARGETS["overhead_ms_per_task"],
                f"tiny {mode} N={worst} (N={ns[-1]}: {tiny[ns[-1]]['overhead_ms_per_task']:.2f})")
        every = [r[mode] for r in result["rows"] if mode in r]
        if every:
            add("bytes per actor / shared parameters, worst case", max(x["bytes_ratio"] for x in every),
                TARGETS["bytes_ratio"], f"all {mode}")
        # RESULTS.md §6.2: LoRA (r = 8) against full, side by side on MiniLM at N = 2
        full_r, lora_r = rows.get(("minilm", 2), {}).get(mode), lora.get(("minilm", 2), {}).get(mode)
        add("lora: step / slowest-actor compute", lora_r and lora_r["step_over_compute"], TARGETS["lora_step_over_compute"],
            f"minilm N=2 {mode}")
        fall = full_r["bytes_per_actor"] / lora_r["bytes_per_actor"] if full_r and lora_r else None
        add("lora: bytes per actor, full ÷ lora", fall, TARGETS["lora_bytes_fall"], f"minilm N=2 {mode}", at_least=True)
    # RESULTS.md §14: what learning the mixture costs per step (meta.weighting.rule alignment, one target task):
    # at most one task's compute (the slowest actor's) plus 5% of the fixed mixture's step, side by side
    learned = {(r["model"], r["tasks"]): r for r in result["rows"] if r.get("weighting") == "alignment"
               and r.get("algorithm", first) == first and r.get("trainable", "full") == "full"}
    for (model, n), r in sorted(learned.items()):
        fixed = rows.get((model, n))
        for mode in result["settings"]["reduce"]:
            if fixed and mode in fixed and mode in r:
                f = fixed[mode]
                add("alignment: step − fixed step (ms)", r[mode]["step_ms"] - f["step_ms"],
                    f["compute_ms"] + 0.05 * f["step_ms"], f"{model} N={n} {mode}; limit = one task's compute + 5%")
    # RESULTS.md §13: what meta.overlap hides
    modes = result["settings"]["reduce"]
    if "collective" in modes:
        r = rows.get(("minilm", 4), {}).get("collective")
        add("collective with overlap: step / slowest-actor compute", r and r["step_over_compute"],
            TARGETS["collective_overlap_step_over_compute"], "minilm N=4 collective")
        # With overlap the actors' compute_s includes what the backward hooks do (bucket copies, and the gloo
        # threads on the same cores): the same ratio against the compute measured without overlap, in the same run
        off = rows.get(("minilm", 4), {}).get("collective:no-overlap")
        add("collective with overlap: step / compute without overlap", r["step_ms"] / off["compute_ms"]
            if r and off else None, TARGETS["collective_overlap_step_over_compute"],
            "minilm N=4 collective vs collective:no-overlap")
    if "driver" in modes and "driver:no-overlap" in modes:
        for model in sorted({m for m, n in rows if n == 8}) or ["minilm"]:
            on, off = rows.get((model, 8), {}).get("driver"), rows.get((model, 8), {}).get("driver:no-overlap")
            fall = 1 - on["overhead_ms"] / off["overhead_ms"] if on and off and off["overhead_ms"] > 0 else None
            add("driver serial time (step − compute): fall with overlap", fall, TARGETS["driver_overlap_serial_fall"],
                f"{model} N=8 driver vs driver:no-overlap", at_least=True)
    return out


def _f(x: Any, fmt: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def format_table(result: dict[str, Any]) -> str:
    """The per-case table and the targets, as Markdown (what RESULTS.md quotes)."""
    cols = ("model", "N", "trainable", "algorithm", "reduce", "step ms", "compute ms", "publish+load ms", "transfer ms",
            "reduce ms", "outer ms",
            "step/compute", "overhead ms/task", "vs (a)", "vs (a) 1 thread", "vs (b)", "bytes/actor ÷ trainable params",
            "bytes/actor ÷ all params", "driver peak RSS MB",
            "anon RSS drift MB/step", "store peak MB")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        for mode in result["settings"]["reduce"]:
            m = r.get(mode)
            if m is None:
                continue
            driver = mode.split(":")[0] == "driver"
            pub = m["publish_ms"] + m["load_ms"] if driver else None
            transfer = m["transfer_ms"] if driver else m["allreduce_ms"]
            lines.append("| " + " | ".join([
                r["model"], str(r["tasks"]), r.get("trainable", "full"),
                r.get("algorithm", "multitask") + (" + alignment" if r.get("weighting") == "alignment" else ""), mode,
                _f(m["step_ms"], ".1f"),
                _f(m["compute_ms"], ".1f"), _f(pub, ".1f"),
                _f(transfer, ".1f"), _f(m.get("reduce_ms"), ".1f"), _f(m["outer_ms"], ".1f"), _f(m["step_over_compute"]),
                _f(m["overhead_ms_per_task"], ".2f"), _f(m.get("vs_reference")), _f(m.get("vs_reference_1t")),
                _f(m.get("vs_ddp")), _f(m["bytes_ratio"], ".2f"), _f(m.get("bytes_vs_all_params"), ".4f"),
                _f(m["peak_rss_mb"], ".0f"),
                _f(m["rss_drift_mb_per_step"], ".2f"), _f(m["store_peak_mb"], ".0f"),
            ]) + " |")
    base = ["", "| model | N | algorithm | (a) sequential ms | (a) threads | (a) grad rel. err | (a) 1 thread ms "
            "| (b) DDP ms | (b) threads | (b) grad rel. err |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r.get("trainable", "full") != "full":
            continue  # the baselines run for the full rows only
        a, a1, b = r.get("reference", {}), r.get("reference_1t", {}), r.get("ddp", {})
        base.append(f"| {r['model']} | {r['tasks']} | {r.get('algorithm', 'multitask')} | {_f(a.get('step_ms'), '.1f')} | "
                    f"{a.get('threads', '—')} | "
                    f"{_f(a.get('grad0_rel_err'), '.1e')} | {_f(a1.get('step_ms'), '.1f')} | {_f(b.get('step_ms'), '.1f')} | "
                    f"{b.get('threads', '—')} | {_f(b.get('grad0_rel_err'), '.1e')} |")
    tg = ["", "| target | where | measured | limit | met |", "|---|---|---|---|---|"]
    for t in result.get("targets", []):
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        limit = f"≥ {t['limit']:g}" if t.get("at_least") else f"≤ {t['limit']:g}"
        tg.append(f"| {t['target']} | {t['where']} | {_f(t['value'])} | {limit} | {met} |")
    fit = ["", format_fit(result["cost_model"])] if result.get("cost_model") else []
    return "\n".join(lines + base + tg + fit)


# ----------------------------------------------------------------------------------------- entry points


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

            raise RaymetaError(f"--reduce {args.reduce}: expected one or more of {', '.join(MODES)}, comma-separated")
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
    """Cases where (a) or (b) did not reproduce the trainer's meta-gradient (float32 transfer only)."""
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
    """Run, print the table and the targets, write JSON. Timing targets are reported, never failed on;
    a baseline that computes a different gradient (a broken comparison) exits 1."""
    output = Path(args.output) if args.output else None
    result = run_bench(settings_from_args(args), output)
    print(format_table(result))
    print(f"\n{len(result['rows'])} case(s) in {result['wall_s']:.0f} s" + (f"; wrote {output}" if output else ""))
    bad = gradient_mismatches(result)
    for line in bad:
        print(f"raymeta: error: bench: not the same work: {line} (> {GRAD_TOLERANCE:g})")
    return 1 if bad else 0
