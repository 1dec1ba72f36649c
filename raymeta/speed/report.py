"""What ``raymeta speed`` prints: the verdicts on a run's figures and the Markdown tables.

:func:`check_targets` sets a run's rows against the targets of benchmarks/results/throughput.md
(and of the LoRA, learned-weights and overlap pages); :func:`format_table` is the per-case table,
the baselines, the targets and the cost model's fit (what RESULTS.md quotes). The cost model's own
tables live here too: :func:`format_fit` (a fit of :mod:`raymeta.speed.costmodel`),
:func:`format_projection` (its projection to GPU clusters) and :func:`projection_report`, what
``raymeta speed --project`` prints. One number formatter serves every table. Pure Python: no
torch, no Ray.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .costmodel import (
    A100,
    BERT_BASE_FLOP_PARAMS,
    BERT_BASE_LORA_PARAMS,
    BERT_BASE_PARAMS,
    CPU_CORE,
    H100,
    MEASURED,
    MINILM_ALL_PARAMS,
    MINILM_PARAMS,
    PROJECTION_TOKENS,
    FitResult,
    Link,
    default_reduce,
    driver_limit,
    project,
    step_time,
    task_flops,
)

__all__ = ["TARGETS", "check_targets", "format_table", "format_fit", "format_projection",
           "projection_report"]

TARGETS = {"step_over_compute": 1.05, "vs_reference": 1.0, "vs_ddp": 1.0,
           "overhead_ms_per_task": 5.0, "bytes_ratio": 2.0,
           "lora_step_over_compute": 1.03, "lora_bytes_fall": 50.0,
           # benchmarks/results/overlap-cost-model.md: meta.overlap
           "collective_overlap_step_over_compute": 1.08, "driver_overlap_serial_fall": 0.30}


def _f(x: Any, spec: str = ".3f") -> str:
    """``x`` formatted by ``spec``; a missing or non-finite figure is a dash."""
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


# ----------------------------------------------------------------------------------------- verdicts


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b·x: (a, b)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of benchmarks/results/throughput.md#targets (and
    benchmarks/results/lora.md#what-lora-saves-per-meta-step for LoRA), each with the measured
    figure and met / not met (None: not measured here)."""
    first = result["settings"].get("algorithms", ["multitask"])[0]
    mine = [r for r in result["rows"]
            if r.get("algorithm", first) == first and r.get("weighting", "fixed") == "fixed"]
    rows = {(r["model"], r["tasks"]): r for r in mine if r.get("trainable", "full") == "full"}
    lora = {(r["model"], r["tasks"]): r for r in mine if r.get("trainable") == "lora"}
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, where: str,
            at_least: bool = False) -> None:
        ok = None if value is None or not math.isfinite(value) else (value >= limit if at_least
                                                                     else value <= limit)
        out.append({"target": name, "where": where, "value": value, "limit": limit, "met": ok,
                    "at_least": at_least})

    for mode in result["settings"]["reduce"]:
        r = rows.get(("minilm", 2), {}).get(mode)
        add("step / slowest-actor compute", r and r["step_over_compute"],
            TARGETS["step_over_compute"], f"minilm N=2 {mode}")
        add("raymeta / (a) sequential", r and r.get("vs_reference"), TARGETS["vs_reference"],
            f"minilm N=2 {mode}")
        add("raymeta / (b) DDP", r and r.get("vs_ddp"), TARGETS["vs_ddp"], f"minilm N=2 {mode}")
        tiny = {k[1]: rows[k][mode] for k in sorted(rows) if k[0] == "tiny" and mode in rows[k]}
        # overhead(N) ≈ fixed + slope·N: linear growth, and the slope is the cost per task
        if len(tiny) > 1:
            ns = sorted(tiny)
            fit = _fit([float(n) for n in ns], [tiny[n]["overhead_ms"] for n in ns])
            add("tiny: overhead per added task, least-squares slope (ms)", fit[1],
                TARGETS["overhead_ms_per_task"],
                f"tiny {mode}, N={','.join(map(str, ns))}; fixed part {fit[0]:.1f} ms")
            worst = max(ns, key=lambda n: tiny[n]["overhead_ms_per_task"])
            add("tiny: overhead / N, worst N (ms)", tiny[worst]["overhead_ms_per_task"],
                TARGETS["overhead_ms_per_task"],
                f"tiny {mode} N={worst} (N={ns[-1]}: {tiny[ns[-1]]['overhead_ms_per_task']:.2f})")
        every = [r[mode] for r in result["rows"] if mode in r]
        if every:
            add("bytes per actor / shared parameters, worst case",
                max(x["bytes_ratio"] for x in every),
                TARGETS["bytes_ratio"], f"all {mode}")
        # benchmarks/results/lora.md#what-lora-saves-per-meta-step: LoRA (r = 8) against full, side
        # by side on MiniLM at N = 2
        full_r = rows.get(("minilm", 2), {}).get(mode)
        lora_r = lora.get(("minilm", 2), {}).get(mode)
        add("lora: step / slowest-actor compute", lora_r and lora_r["step_over_compute"],
            TARGETS["lora_step_over_compute"],
            f"minilm N=2 {mode}")
        fall = full_r["bytes_per_actor"] / lora_r["bytes_per_actor"] if full_r and lora_r else None
        add("lora: bytes per actor, full ÷ lora", fall, TARGETS["lora_bytes_fall"],
            f"minilm N=2 {mode}", at_least=True)
    # benchmarks/results/learned-weights.md: what learning the mixture costs per step
    # (meta.weighting.rule alignment, one target task): at most one task's compute (the slowest
    # actor's) plus 5% of the fixed mixture's step, side by side
    learned = {(r["model"], r["tasks"]): r for r in result["rows"]
               if r.get("weighting") == "alignment"
               and r.get("algorithm", first) == first and r.get("trainable", "full") == "full"}
    for (model, n), r in sorted(learned.items()):
        fixed = rows.get((model, n))
        for mode in result["settings"]["reduce"]:
            if fixed and mode in fixed and mode in r:
                f = fixed[mode]
                add("alignment: step − fixed step (ms)", r[mode]["step_ms"] - f["step_ms"],
                    f["compute_ms"] + 0.05 * f["step_ms"],
                    f"{model} N={n} {mode}; limit = one task's compute + 5%")
    # benchmarks/results/overlap-cost-model.md: what meta.overlap hides
    modes = result["settings"]["reduce"]
    if "collective" in modes:
        r = rows.get(("minilm", 4), {}).get("collective")
        add("collective with overlap: step / slowest-actor compute", r and r["step_over_compute"],
            TARGETS["collective_overlap_step_over_compute"], "minilm N=4 collective")
        # With overlap the actors' compute_s includes what the backward hooks do (bucket copies, and
        # the gloo threads on the same cores): the same ratio against the compute measured without
        # overlap, in the same run
        off = rows.get(("minilm", 4), {}).get("collective:no-overlap")
        add("collective with overlap: step / compute without overlap",
            r["step_ms"] / off["compute_ms"]
            if r and off else None, TARGETS["collective_overlap_step_over_compute"],
            "minilm N=4 collective vs collective:no-overlap")
    if "driver" in modes and "driver:no-overlap" in modes:
        for model in sorted({m for m, n in rows if n == 8}) or ["minilm"]:
            on = rows.get((model, 8), {}).get("driver")
            off = rows.get((model, 8), {}).get("driver:no-overlap")
            fall = (1 - on["overhead_ms"] / off["overhead_ms"]
                    if on and off and off["overhead_ms"] > 0 else None)
            add("driver serial time (step − compute): fall with overlap", fall,
                TARGETS["driver_overlap_serial_fall"],
                f"{model} N=8 driver vs driver:no-overlap", at_least=True)
    return out


# ----------------------------------------------------------------------------------------- tables


def format_table(result: dict[str, Any]) -> str:
    """The per-case table and the targets, as Markdown (what RESULTS.md quotes)."""
    cols = ("model", "N", "trainable", "algorithm", "reduce", "step ms", "compute ms",
            "publish+load ms", "transfer ms",
            "reduce ms", "outer ms",
            "step/compute", "overhead ms/task", "vs (a)", "vs (a) 1 thread", "vs (b)",
            "bytes/actor ÷ trainable params",
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
                r.get("algorithm", "multitask")
                + (" + alignment" if r.get("weighting") == "alignment" else ""),
                mode,
                _f(m["step_ms"], ".1f"),
                _f(m["compute_ms"], ".1f"), _f(pub, ".1f"),
                _f(transfer, ".1f"), _f(m.get("reduce_ms"), ".1f"), _f(m["outer_ms"], ".1f"),
                _f(m["step_over_compute"]),
                _f(m["overhead_ms_per_task"], ".2f"), _f(m.get("vs_reference")),
                _f(m.get("vs_reference_1t")),
                _f(m.get("vs_ddp")), _f(m["bytes_ratio"], ".2f"),
                _f(m.get("bytes_vs_all_params"), ".4f"),
                _f(m["peak_rss_mb"], ".0f"),
                _f(m["rss_drift_mb_per_step"], ".2f"), _f(m["store_peak_mb"], ".0f"),
            ]) + " |")
    base = ["", "| model | N | algorithm | (a) sequential ms | (a) threads | (a) grad rel. err | "
            "(a) 1 thread ms | (b) DDP ms | (b) threads | (b) grad rel. err |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r.get("trainable", "full") != "full":
            continue  # the baselines run for the full rows only
        a, a1, b = r.get("reference", {}), r.get("reference_1t", {}), r.get("ddp", {})
        base.append(f"| {r['model']} | {r['tasks']} | {r.get('algorithm', 'multitask')} | "
                    f"{_f(a.get('step_ms'), '.1f')} | {a.get('threads', '—')} | "
                    f"{_f(a.get('grad0_rel_err'), '.1e')} | {_f(a1.get('step_ms'), '.1f')} | "
                    f"{_f(b.get('step_ms'), '.1f')} | "
                    f"{b.get('threads', '—')} | {_f(b.get('grad0_rel_err'), '.1e')} |")
    tg = ["", "| target | where | measured | limit | met |", "|---|---|---|---|---|"]
    for t in result.get("targets", []):
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        limit = f"≥ {t['limit']:g}" if t.get("at_least") else f"≤ {t['limit']:g}"
        tg.append(f"| {t['target']} | {t['where']} | {_f(t['value'])} | {limit} | {met} |")
    fit = ["", format_fit(result["cost_model"])] if result.get("cost_model") else []
    return "\n".join(lines + base + tg + fit)


def format_projection(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`~raymeta.speed.costmodel.project`'s rows as a Markdown table."""
    cols = ("model", "device", "trainable", "GPUs (= tasks)", "link Gb/s", "compute ms",
            "driver ms",
            "driver no-overlap ms", "collective ms", "collective no-overlap ms",
            "driver step/compute",
            "collective step/compute", "faster (overlap)")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join([
            str(r["model"]), str(r["device"]),
            f"{r['trainable']} ({r['trainable_params'] / 1e6:.2f}M)",
            str(r["gpus"]),
            f"{r['link_gbps']:g}", _f(r["compute_ms"], ".1f"), _f(r["driver_ms"], ".1f"),
            _f(r["driver:no-overlap_ms"], ".1f"), _f(r["collective_ms"], ".1f"),
            _f(r["collective:no-overlap_ms"], ".1f"), _f(r["driver_over_compute"], ".2f"),
            _f(r["collective_over_compute"], ".2f"), f"**{r['faster']}**",
        ]) + " |")
    return "\n".join(lines)


_UNITS = {"_s": ("ms", 1e3), "_s_per_task": ("ms/task", 1e3), "_s_per_byte": ("ms/MB", 1e9),
          "_s_per_byte_task": ("ms/(MB·task)", 1e9), "_s_per_byte_pair": ("ms/(MB·pair)", 1e9),
          "_s_per_param": ("ms/M params", 1e9), "_s_per_hop": ("ms/hop", 1e3)}


def format_fit(result: FitResult | Mapping[str, Any]) -> str:
    """A fit's constants (readable units), its components and each row's prediction, as Markdown."""
    d = result.to_dict() if isinstance(result, FitResult) else dict(result)
    lines = [f"cost model fit (benchmarks/results/overlap-cost-model.md): {len(d['rows'])} "
             "measured steps, cores = "
             f"{_f(d.get('cores'), 'g')}; |error| median {_f(d['median_abs_error'], '.1%')}, "
             f"max {_f(d['max_abs_error'], '.1%')}", "", "| constant | value |", "|---|---|"]
    for key, value in d["constants"].items():
        suffix = next(s for s in sorted(_UNITS, key=len, reverse=True) if key.endswith(s))
        unit, factor = _UNITS[suffix]
        lines.append(f"| {key} | {value * factor:.4g} {unit} |")
    lines += ["", "| component | observations | rank / constants | prior fills in |",
              "|---|---|---|---|"]
    for name, comp in d["components"].items():
        lines.append(f"| {name} | {comp['observations']} | {comp['rank']} / {comp['constants']} | "
                     f"{'yes' if comp['from_prior'] else 'no'} |")
    lines += ["", "| model | N | trainable | mode | compute ms | measured step ms | predicted ms | "
              "error |",
              "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['model']} | {r['tasks']} | {r['trainable']} | {r['mode']} | "
                     f"{_f(r['compute_ms'], '.1f')} "
                     f"| {_f(r['measured_ms'], '.1f')} | {_f(r['predicted_ms'], '.1f')} | "
                     f"{_f(r['error'], '+.1%')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- `raymeta
# speed --project`


def projection_report(fitted: FitResult | None = None, *, source: str | None = None,
                      tokens_per_task_step: float = PROJECTION_TOKENS) -> str:
    """What ``raymeta speed --project`` prints: the fit (when given), the projection table, where
    the driver form stops scaling, and what ``meta.reduce: auto`` picks for a few setups."""
    c = fitted.constants if fitted is not None else MEASURED
    source = source or ("MEASURED: fitted on benchmarks/speed_overlap.json, "
                        "benchmarks/results/overlap-cost-model.md#overlap-on-and-off-side-by-side"
                        if fitted is None else "this fit")
    out = [format_fit(fitted), ""] if fitted is not None else []
    out += ["BERT-base meta-step projected with one task actor per GPU (N = GPUs), "
            f"{tokens_per_task_step:g} tokens "
            "per task and step, first-order (6·P·tokens full, 4·P·tokens LoRA r=8 on P = 85M "
            "non-embedding "
            f"parameters), MFU {A100.mfu:.0%} of the dense bf16 peak; the driver's and this "
            "machine's fixed costs "
            f"from the constants ({source}); step ms with overlap unless marked.", "",
            format_projection(project(c, tokens_per_task_step=tokens_per_task_step)), ""]
    out += ["Where the driver form stops scaling (overlap on): the smallest N with step / compute "
            "> 1.10, and with step > 1.10 × the step at N = 1 (None: not up to 4096).", "",
            "| model | actors on | trainable | tokens/task | link Gb/s | step/compute at N=1 | "
            "step/compute > 1.10 "
            "from N | step > 1.10 × step(N=1) from N |", "|---|---|---|---|---|---|---|---|"]
    cases = [("BERT-base", A100, "full", BERT_BASE_PARAMS, BERT_BASE_PARAMS, BERT_BASE_FLOP_PARAMS,
              tokens_per_task_step),
             ("BERT-base", A100, "lora", BERT_BASE_PARAMS, BERT_BASE_LORA_PARAMS,
              BERT_BASE_FLOP_PARAMS,
              tokens_per_task_step),
             ("BERT-base", H100, "lora", BERT_BASE_PARAMS, BERT_BASE_LORA_PARAMS,
              BERT_BASE_FLOP_PARAMS,
              tokens_per_task_step),
             ("MiniLM-L6", CPU_CORE, "full", MINILM_ALL_PARAMS, MINILM_PARAMS, MINILM_ALL_PARAMS,
              512)]
    for model, dev, trainable, params, tparams, fparams, tokens in cases:
        for gbps in (1, 25, 100, 400):
            if dev is not CPU_CORE and gbps == 1:
                continue
            limits = [driver_limit(c, params=params, flop_params=fparams, trainable_params=tparams,
                                   link=gbps,
                                   device=dev, tokens_per_task_step=tokens,
                                   basis=b) for b in ("compute", "one_task")]
            compute = dev.compute_s(task_flops(tokens, fparams, min(tparams, fparams)))
            one = step_time("driver", 1, 4.0 * tparams, tparams, compute, c, True, Link(gbps),
                            spread_s=0.0).step_over_compute
            out.append(f"| {model} | {dev.name} | {trainable} | {tokens:g} | {gbps:g} | {one:.2f} "
                       f"| {limits[0]} | {limits[1]} |")
    bert = int(BERT_BASE_PARAMS)
    examples = [
        ("MiniLM, 8 tasks, one machine (local Ray)",
         dict(n_actors=8, shared_numel=MINILM_PARAMS, total_numel=MINILM_ALL_PARAMS,
              tokens_per_task_step=512, local=True)),
        ("BERT-base, 64 A100, 100 Gb/s, combine: pcgrad",
         dict(n_actors=64, shared_numel=bert, total_numel=bert,
              tokens_per_task_step=tokens_per_task_step, local=False, combine="pcgrad",
              device=A100, link_gbps=100)),
        ("BERT-base, one task on a cluster",
         dict(n_actors=1, shared_numel=bert, total_numel=bert,
              tokens_per_task_step=tokens_per_task_step, local=False, device=A100)),
        ("BERT-base full, 64 A100, 100 Gb/s",
         dict(n_actors=64, shared_numel=bert, total_numel=bert,
              tokens_per_task_step=tokens_per_task_step, local=False, device=A100,
              link_gbps=100)),
        ("BERT-base LoRA, 8 A100, 25 Gb/s",
         dict(n_actors=8, shared_numel=BERT_BASE_LORA_PARAMS, total_numel=bert,
              tokens_per_task_step=tokens_per_task_step, local=False, device=A100,
              link_gbps=25)),
        ("MiniLM full, 4 CPU nodes (a core per task), 25 Gb/s",
         dict(n_actors=4, shared_numel=MINILM_PARAMS, total_numel=MINILM_ALL_PARAMS,
              tokens_per_task_step=512, local=False)),
        ("MiniLM LoRA, 4 CPU nodes (a core per task), 25 Gb/s",
         dict(n_actors=4, shared_numel=331_776, total_numel=MINILM_ALL_PARAMS,
              tokens_per_task_step=512, local=False)),
    ]
    out += ["", "What `meta.reduce: auto` picks (raymeta.core.reduce_choice.default_reduce):", "",
            "| setup | meta.reduce | why |", "|---|---|---|"]
    for name, kw in examples:
        mode, why = default_reduce(**kw, c=c)
        out.append(f"| {name} | {mode} | {why} |")
    return "\n".join(out)
