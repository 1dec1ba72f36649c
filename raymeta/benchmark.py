"""``raymeta benchmark``: what meta-pretraining buys, against the right baselines.

Starting points compared on held-out tasks, each meta-trained for the same number of
meta-steps on the same seeded episodes:
(a) the pretrained model as is; (b) ``multitask`` average-gradient training, the plain
baseline; then every meta-algorithm in ``benchmark.algorithms`` (FOMAML, Reptile, ANIL,
ProtoNet, MAML). Gains over (a) and (b) come with paired 95% CIs: every init sees the same
K-shot splits and the same episodes, so the per-split (per-episode) differences are used.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from .config import ExperimentConfig, apply_overrides, load_config
from .config.resolve import resolve
from .core.checkpoint import export_model
from .core.jsonio import write_json_atomic
from .core.model import load_encoder, load_tokenizer
from .errors import ConfigError
from .eval.compare import gains, significant
from .eval.evaluate import check_methods, evaluate, evaluate_episodic
from .eval.fastfit import FastfitSettings
from .eval.finetune import FinetuneSettings
from .eval.report import percent_cell, plot_curves, plot_scores, results_table
from .eval.setfit import SetfitSettings
from .storage import local_model_path
from .tasks.registry import task_from_entry
from .train.validation import BEST_JSON
from .train.validation_tasks import validation_specs

# gains: raymeta.eval.compare's (raymeta evaluate pairs its inits with it too), named here as well
__all__ = ["run_benchmark", "quick_config", "gains", "run_configs"]

log = logging.getLogger("raymeta.benchmark")


def quick_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The ``--quick`` budget: ``benchmark.quick``'s overrides on top of the config."""
    data = cfg.model_dump(mode="json")
    apply_overrides(data, list(cfg.benchmark.quick.items()))
    return ExperimentConfig.model_validate(data)


def run_configs(cfg: ExperimentConfig, out: Path) -> dict[str, ExperimentConfig]:
    """Init name -> the meta-training config of that run, all built (and checked) before any run
    starts.

    Without ``benchmark.variants``: one run per algorithm, named after it. With variants: every
    variant x every algorithm, named ``variant/algorithm``, the variant's dotted overrides applied
    on top of the config (tasks entries resolved like the config's own); a variant that sets
    ``meta.algorithm`` itself is one run, named after the variant (e.g. ``{svm: {meta.algorithm:
    metaopt, meta.metaopt.head: svm}}``). A bad override is one line naming the variant."""
    variants = cfg.benchmark.variants or {"": {}}
    runs: dict[str, ExperimentConfig] = {}
    for variant, overrides in variants.items():
        base = cfg
        if variant:
            data = cfg.model_dump(mode="json")
            try:
                base = load_config(data=apply_overrides(data, list(overrides.items())))
            except ConfigError as e:
                raise ConfigError(f"config key 'benchmark.variants.{variant}': {e}") from None
        own = "meta.algorithm" in overrides
        for alg in [base.meta.algorithm] if own else cfg.benchmark.algorithms:
            run_cfg = base.model_copy(deep=True)
            run_cfg.meta.algorithm = alg
            name = variant if own else f"{variant}/{alg}" if variant else alg
            run_cfg.output_dir = str(out / "runs" / name)
            if run_cfg.eval.validation is not None:
                # disjoint from this variant's tasks and the tests, before any run
                validation_specs(run_cfg)
            runs[name] = run_cfg
    return runs


def _validation_summary(run_dir: Path) -> dict[str, Any] | None:
    """Which step meta-validation chose for a run, and its score (``best/raymeta_best.json``)."""
    f = run_dir / "best" / BEST_JSON
    if not f.is_file():
        return None
    best = json.loads(f.read_text())
    return {"best_step": best.get("step"), "score": best.get("score")}


def _tasks(entries: list[dict[str, Any]], cfg: ExperimentConfig):
    return [task_from_entry(e, data_dir=cfg.data_dir) for e in entries]


def _pretrained_init(cfg: ExperimentConfig, out: Path) -> str:
    """(a): the configured model; a from_config model is exported (seeded) so every step loads the
    same one."""
    if cfg.model.from_config is None:
        return cfg.model.name_or_path
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(cfg.model, fetch=local_model_path)  # model.tokenizer may be a URI
    return str(export_model(out / "pretrained", load_encoder(cfg.model, len(tok)), tok,
                            pooling=cfg.model.pooling))


_NOT_TRAINING = ("name", "output_dir", "eval", "benchmark")


def _finished(run_cfg: ExperimentConfig) -> bool:
    """A run directory whose final model exists and whose saved config trains exactly like
    ``run_cfg`` (resolved: a run saves its resolved config)."""
    import yaml

    from .config import redact

    run_dir = Path(run_cfg.output_dir)
    saved = run_dir / "config.yaml"
    if not (run_dir / "final" / "model.safetensors").is_file() or not saved.is_file():
        return False
    try:  # through today's schema, so keys added since (with their defaults) do not force a re-run
        old = redact(ExperimentConfig.model_validate(yaml.safe_load(saved.read_text()))
                     .model_dump(mode="json"))
    except Exception:
        return False
    new = redact(run_cfg.model_dump(mode="json"))
    return all(old.get(k) == new.get(k) for k in new if k not in _NOT_TRAINING)


def _gains_table(g: dict[str, Any], baseline: str) -> str:
    lines = [f"**gain over {baseline}** (points, paired mean ± 95% CI; bold: CI excludes 0)\n"]
    cols = sorted({f"{t} {s}" for init in g.values() for t, ss in init.items() for s in ss})
    lines.append("| init | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for init, tasks in g.items():
        cells = []
        for c in cols:
            t, _, s = c.partition(" ")
            r = tasks.get(t, {}).get(s)
            if r is None:
                cells.append("—")
                continue
            txt = percent_cell(r["mean"], r.get("ci95"), signed=True)
            cells.append(f"**{txt}**" if significant(r) else txt)  # NaN: never bold
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _baselines(cfg: ExperimentConfig, results: dict[str, Any]) -> dict[str, list[str]]:
    """Which inits each baseline is compared with (paired): everything with the pretrained model,
    with ``multitask`` and with each run of ``benchmark.compare_to``; with variants, each later
    variant with the first one, algorithm by algorithm."""
    out = {"pretrained": [k for k in results if k != "pretrained"]}
    for base in ["multitask", *cfg.benchmark.compare_to]:
        if base in results:
            out[base] = [k for k in results if k != base]
    names = list(cfg.benchmark.variants)
    for alg in cfg.benchmark.algorithms if len(names) > 1 else []:
        others = [f"{v}/{alg}" for v in names[1:] if f"{v}/{alg}" in results]
        if f"{names[0]}/{alg}" in results and others:
            out[f"{names[0]}/{alg}"] = others
    return out


def _names_track(cfg: ExperimentConfig, init: str, kshot_tasks: list[Any],
                 episodic_tasks: list[Any],
                 settings: FinetuneSettings) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``eval.label_prior``: the prototype classifier with the class names as support points
    (``prototype+names``) on the K-shot classification tasks and the episodes, at K = 0 too; (None,
    None) without it."""
    ev = cfg.eval
    if ev.label_prior is None:
        return None, None
    prior = {"label_prior": ev.label_prior.weight, "label_template": ev.label_prior.template}
    classified = [t for t in kshot_tasks if t.type == "sequence_classification"]
    k = evaluate(init, classified, shots=sorted({0, *ev.shots}), n_splits=ev.splits,
                 settings=settings, seed=cfg.seed,
                 data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, progress=False,
                 method=["prototype"],
                 **prior) if classified else None
    e = evaluate_episodic(init, episodic_tasks, ways=ev.ways, shots=sorted({0, *ev.episodic_shots}),
                          queries=ev.queries,
                          episodes=ev.episodes, head_steps=0, seed=cfg.seed, data_dir=cfg.data_dir,
                          cache_dir=cfg.cache_dir, methods=["prototype"],
                          **prior) if episodic_tasks else None
    return k, e


def _deep_update(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = value


def _merge(*parts: dict[str, Any] | None) -> dict[str, Any]:
    """One init's results: K-shot and episodic (and the label-name track's), task by task, setting
    by setting."""
    merged: dict[str, Any] = {"tasks": {}}
    for part in parts:  # a task can have both K-shot and episodic results
        for name, entry in (part or {}).get("tasks", {}).items():
            _deep_update(merged["tasks"].setdefault(name, {}), entry)
        if part and part.get("splits"):
            _deep_update(merged.setdefault("splits", {}), part["splits"])
    return merged


def run_benchmark(cfg: ExperimentConfig, out_dir: str | Path) -> dict[str, Any]:
    """Meta-train each algorithm, evaluate every init, write results.json, results.md and plots."""
    import ray

    from .cluster import connect
    from .train.pool import ActorPool
    from .train.trainer import MetaTrainer

    out = Path(out_dir)
    runs = run_configs(cfg, out)  # every variant's config checked before anything starts
    # eval.methods too (setfit installed?), not after training
    check_methods(_tasks(cfg.eval.tasks, cfg), cfg.eval.methods)
    out.mkdir(parents=True, exist_ok=True)
    started = connect(cfg.resources.address)
    # The runs train one after another, mostly on the same tasks: the next run resets the previous
    # run's task actors (TaskActor.reset) instead of starting new ones, which costs seconds each
    # (importing torch and transformers, loading the model). Only when it asks for the same actors
    # with the same resources; a reset actor computes what a new one does
    # (tests/integration/test_trainer.py::test_deterministic_for_a_seed).
    kept = ActorPool()
    try:
        inits: dict[str, str] = {"pretrained": _pretrained_init(cfg, out)}
        timing: dict[str, Any] = {}
        curves: dict[str, Path] = {}
        for name, run_cfg in runs.items():
            run = resolve(run_cfg)  # held-out classes and best, once per run, before it starts
            run_cfg, run_dir = run.cfg, Path(run_cfg.output_dir)
            # an interrupted benchmark resumes without re-training what is done
            if _finished(run_cfg):
                log.info("reusing the finished meta-training run %s", run_dir)
                inits[name] = str(run_dir / "final")
            else:
                # lend: None if none fit
                trainer = MetaTrainer(run_cfg, actors=kept.lend(run_cfg), keep_actors=True)
                inits[name] = str(trainer.run())
                kept.keep(trainer.actors, run_cfg)
            # the step meta-validation chose (step 0, the pretrained model, included)
            if run.export_best:
                inits[name] = str(run_dir / "best")
            recs = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                    if r.get("kind") != "validation"]
            timing[name] = {"steps": len(recs), "train_s": round(sum(r["step_s"] for r in recs), 1),
                            "s_per_step": round(sum(r["step_s"] for r in recs) / len(recs), 2)}
            if (val := _validation_summary(run_dir)) is not None:
                timing[name]["validation"] = val
            curves[name] = run_dir / "metrics.jsonl"
            log.info("meta-trained %s: %d steps, %.0fs of meta-steps", name, len(recs),
                     timing[name]["train_s"])
        kept.release()  # their CPUs (or GPUs) go to the evaluation's runs
        ev = cfg.eval
        kshot_tasks, episodic_tasks = _tasks(ev.tasks, cfg), _tasks(ev.episodic_tasks, cfg)
        settings = FinetuneSettings(steps=ev.finetune_steps, lr=ev.finetune_lr, head_lr=ev.head_lr,
                                    batch_size=ev.batch_size, max_test=ev.max_test_examples)
        setfit = SetfitSettings(**ev.setfit.model_dump())
        fastfit = FastfitSettings(**ev.fastfit.model_dump())
        results: dict[str, dict[str, Any]] = {}
        for name, init in inits.items():
            t0 = time.perf_counter()
            k = evaluate(init, kshot_tasks, shots=ev.shots, n_splits=ev.splits, settings=settings,
                         seed=cfg.seed,
                         data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, progress=False,
                         method=ev.methods,
                         setfit=setfit, fastfit=fastfit, ridge=ev.ridge,
                         svm=ev.svm) if kshot_tasks else None
            e = evaluate_episodic(init, episodic_tasks, ways=ev.ways, shots=ev.episodic_shots,
                                  queries=ev.queries,
                                  episodes=ev.episodes, head_steps=ev.head_steps, seed=cfg.seed,
                                  data_dir=cfg.data_dir,
                                  cache_dir=cfg.cache_dir, methods=ev.episodic_methods,
                                  ridge=ev.ridge,
                                  svm=ev.svm) if episodic_tasks else None
            results[name] = _merge(k, e, *_names_track(cfg, init, kshot_tasks, episodic_tasks,
                                                       settings))
            log.info("evaluated %s in %.0fs", name, time.perf_counter() - t0)
    finally:
        kept.release()
        if started:
            ray.shutdown()
    baselines = _baselines(cfg, results)
    report = {"config": cfg.model_dump(mode="json"), "meta_training": timing, "inits": inits,
              "results": results,
              "gain_over_pretrained": gains(results, "pretrained"),
              "gain_over_multitask": gains(results, "multitask"),
              "gain_over": {b: gains({k: results[k] for k in [b, *others]}, b) for b,
                            others in baselines.items()}}
    write_json_atomic(out / "results.json", report)
    plots = plot_scores(results, out)
    if curves:
        plots.append(plot_curves(curves, out / "meta_training_curves.png"))
    md = [f"# raymeta benchmark: {cfg.name}\n",
          "Meta-training (same steps and episodes for every run):\n",
          "| run | meta-steps | seconds in meta-steps | s / step | best step (validation) | "
          "validation score |",
          "|---|---|---|---|---|---|"]
    for a, t in timing.items():
        val = t.get("validation") or {}
        score = f"{100 * val['score']:.1f}" if val.get("score") is not None else "—"
        md.append(f"| {a} | {t['steps']} | {t['train_s']} | {t['s_per_step']} | "
                  f"{val.get('best_step', '—')} | {score} |")
    md += ["", results_table(results)]
    md += [_gains_table(report["gain_over"][b], b) for b in baselines if report["gain_over"][b]]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    (out / "results.md").write_text("\n".join(md) + "\n")
    write_json_atomic(out / "config.json", report["config"])
    return report
