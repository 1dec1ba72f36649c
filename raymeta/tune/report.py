"""After ``raymeta tune``: the best config and model, the seeded heuristics against the search, and
a plot.

Selection uses meta-validation only. The meta-test tasks (``tune.test_tasks``) are scored here,
once, on the selected checkpoints (best trial, each heuristic, the plain pretrained init), with the
same seeded episodes for every init, to say honestly whether a validation gain carries over.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

from .. import storage
from ..config import ExperimentConfig, ModelConfig, save_config
from ..core.jsonio import dumps as strict_dumps
from ..core.jsonio import write_json_atomic
from ..eval.metrics import mean_ci95, paired_ci95
from ..eval.report import percent_cell
from .scoring import METRIC, FewShotScorer, task_specs, validation_scorer
from .space import apply_params, heuristic_of, mixture, search_space

__all__ = ["finish", "summary_table"]

log = logging.getLogger("raymeta.tune")


def _reports(last: dict[str, Any]) -> int:
    """How many validation scores a trial reported, along the line of checkpoints its last result
    continues: Tune's ``training_iteration``, which a trial restored from a checkpoint takes over.
    Not the rows of Tune's result log, which can hold a step twice (a trial started over because
    Ctrl-C came before Tune had registered its checkpoint) or lose the rows before a checkpoint it
    was restored from on ``--resume`` (both seen here)."""
    return int(last.get("training_iteration") or 0) if METRIC in last else 0


def _trial_rows(cfg: ExperimentConfig, grid: Any, sizes: dict[str, int]) -> list[dict[str, Any]]:
    _, points = search_space(cfg, sizes)
    named = dict(zip(cfg.tune.heuristics, points)) if cfg.tune.space.weights else {}
    max_t = max(1, cfg.meta.steps // cfg.tune.eval_every)
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        last = result.metrics or {}
        reports = _reports(last)
        best = (float(df[METRIC].max()) if reports and df is not None and METRIC in df
                else float("nan"))
        ckpt = result.get_best_checkpoint(METRIC,
                                          "max") if reports and result.best_checkpoints else None
        params = dict(result.config or {})
        rows.append({
            "trial": Path(result.path).name, "heuristic": heuristic_of(params, named),
                     "val_score": best,
            "reports": reports, "stopped_early": reports < max_t, "last_step": last.get("step"),
            "resumed_at": last.get("resumed_at"), "reused_actors": last.get("reused_actors"),
            "error": str(result.error).splitlines()[0] if result.error else None,
            "params": params, "mixture": mixture(params,
                                                 list(sizes)) if cfg.tune.space.weights and params
                     else None,
            "checkpoint": ckpt,
        })
    return rows


def _export_best(ckpt: Any, target: Path) -> Path:
    """The best checkpoint's encoder and tokenizer as a Hugging Face directory (``AutoModel`` loads
    it)."""
    from ..core.checkpoint import atomic_dir

    with ckpt.as_directory() as d, atomic_dir(target) as tmp:
        shutil.copytree(Path(d) / "model", tmp, dirs_exist_ok=True)
    return target


def _test_scores(cfg: ExperimentConfig, inits: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Meta-validation and meta-test scores of each init, with 95% CIs, and paired against the first
    init (the same rows and episodes for every init, so the differences are paired per episode)."""
    from transformers.utils import logging as hf_logging

    from ..core.model import load_encoder

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per init is noise in the report
    scorers = {"val": validation_scorer(cfg)}
    if cfg.tune.test_tasks:
        scorers["test"] = FewShotScorer(cfg, task_specs(cfg, cfg.tune.test_tasks))
    episodes: dict[str, dict[str, list[float]]] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, path in inits.items():
        encoder = load_encoder(ModelConfig(name_or_path=path, pooling=cfg.model.pooling),
                               fetch=storage.local_model_path)  # the pretrained init may be a URI
        out[name], episodes[name] = {}, {}
        for split, scorer in scorers.items():
            per_task = scorer.episodes(encoder)
            values = [v for r in per_task.values() for v in r.values]
            episodes[name][split] = values
            out[name][split] = sum(values) / len(values)
            out[name][f"{split}_ci95"] = mean_ci95(values)["ci95"]
            out[name].update({f"{split}/{k}": r.mean for k, r in per_task.items()})
    first = next(iter(inits))
    for name in list(inits)[1:]:
        for split in scorers:
            gap = paired_ci95(episodes[first][split], episodes[name][split])
            out[name][f"{split}_gap_to_best"] = {"mean": gap["mean"], "ci95": gap["ci95"]}
    return out


def _plot(rows: list[dict[str, Any]], tasks: list[str], path: Path) -> Path | None:
    """Validation score against each searched dimension; heuristics labelled, the best starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not math.isnan(r["val_score"])]
    if not ok:
        return None
    dims = [k for k in ("lr", "inner_lr", "inner_steps", "algorithm", "temperature", "trainable",
                        "lora_r")
            if k in ok[0]["params"]]
    dims += [f"w:{t}" for t in tasks if ok[0]["mixture"]]
    fig, axes = plt.subplots(1, len(dims), figsize=(3.2 * len(dims), 3.2), squeeze=False)
    best = max(ok, key=lambda r: r["val_score"])
    for ax, dim in zip(axes[0], dims):
        def value(r: dict[str, Any], dim: str = dim) -> Any:
            return r["mixture"][dim[2:]] if dim.startswith("w:") else r["params"][dim]

        ax.scatter([value(r) for r in ok], [r["val_score"] for r in ok],
                   c=["tab:orange" if r["heuristic"] else "tab:blue"
                                                                            for r in ok], s=22)
        for r in ok:
            if r["heuristic"]:
                ax.annotate(r["heuristic"], (value(r), r["val_score"]), fontsize=7)
        ax.scatter([value(best)], [best["val_score"]], marker="*", s=160, c="tab:red")
        if dim in ("lr", "inner_lr", "temperature"):
            ax.set_xscale("log")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.set_xlabel("mixture weight of " + dim[2:] if dim.startswith("w:") else dim)
        ax.set_ylabel("meta-validation accuracy")
    fig.suptitle("raymeta tune: best meta-validation score per trial (orange: seeded heuristics, "
                 "star: best)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_table(summary: dict[str, Any]) -> str:
    """Markdown: each init's val and test accuracy (± 95% CI), and the best's paired gain over
    it."""

    def pct(r: dict[str, Any], split: str) -> str:
        return percent_cell(r[split], r.get(split + "_ci95")) if split in r else "not scored"

    def gain(r: dict[str, Any], split: str) -> str:
        g = r.get(f"{split}_gap_to_best")
        return percent_cell(g["mean"], g.get("ci95"), signed=True) if g else "-"

    lines = ["| init | mixture | val | test | best − this, val | best − this, test |",
             "|---|---|---|---|---|---|"]
    for name, r in summary["compare"].items():
        if name == "tune best" and summary["best"].get("is_heuristic"):
            name = f"tune best (= the {summary['best']['is_heuristic']} heuristic)"
        mix = ", ".join(f"{t} {w:.2f}" for t, w in (r.get("mixture") or {}).items()) or "-"
        lines.append(f"| {name} | {mix} | {pct(r, 'val')} | {pct(r, 'test')} | {gain(r, 'val')} | "
                     f"{gain(r, 'test')} |")
    return "\n".join(lines)


def finish(cfg: ExperimentConfig, grid: Any, sizes: dict[str, int],
           out: Path | None = None) -> dict[str, Any]:
    """Write ``best_config.yaml``, ``best_model/``, ``tune_scores.png`` and
    ``tune_summary.{json,md}`` into ``out`` (default: ``output_dir``; when that is a storage URI,
    the local directory mirrored to it)."""
    from ..errors import RaymetaError

    out = Path(cfg.output_dir) if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    rows = _trial_rows(cfg, grid, sizes)
    scored = [r for r in rows if r["checkpoint"] is not None and not math.isnan(r["val_score"])]
    if not scored:
        first = next((r["error"] for r in rows if r["error"]),
                     "no trial reported a validation score")
        raise RaymetaError(f"tune: no trial finished a validation report ({first})")
    best = max(scored, key=lambda r: r["val_score"])
    best_cfg = apply_params(cfg, best["params"])
    best_cfg.output_dir = storage.join(cfg.output_dir,
                                       "best_run") if storage.is_uri(cfg.output_dir) \
        else str(out / "best_run")
    save_config(best_cfg, out, "best_config.yaml")
    model_dir = _export_best(best["checkpoint"], out / "best_model")
    # The comparison: the best trial, each seeded heuristic (its best checkpoint), the plain init.
    inits: dict[str, str] = {"tune best": str(model_dir)}
    tmp = out / ".heuristic_models"
    for r in scored:
        if r["heuristic"] and r is not best:
            inits[r["heuristic"]] = str(_export_best(r["checkpoint"], tmp / r["heuristic"]))
        elif r["heuristic"]:
            inits[r["heuristic"]] = str(model_dir)
    if cfg.model.from_config is None:
        inits["pretrained (no meta-training)"] = cfg.model.name_or_path
    scores = _test_scores(cfg, inits)
    shutil.rmtree(tmp, ignore_errors=True)
    by_name = {name: r for r in scored for name in (["tune best"] if r is best
                                                    else []) + [r["heuristic"]] if name}
    compare = {name: {**s, "mixture": by_name[name]["mixture"] if name in by_name else None,
                      "stopped_early": by_name[name]["stopped_early"] if name in by_name else None}
               for name, s in scores.items()}
    summary = {
        "experiment": grid.experiment_path, "metric": f"mean {cfg.tune.method} accuracy, "
        f"{cfg.tune.ways}-way {cfg.tune.shots}-shot, {cfg.tune.episodes} seeded episodes"
        + (f", {cfg.meta.proto.distance} distance" if cfg.tune.method == "prototype" else ""),
        "best": {"trial": best["trial"], "val_score_during_search": best["val_score"],
                 "params": best["params"],
                 "mixture": best["mixture"], "is_heuristic": best["heuristic"]},
        "compare": compare,
        "trials": [{k: v for k, v in r.items() if k != "checkpoint"} for r in rows],
    }
    write_json_atomic(out / "tune_summary.json", summary)
    (out / "tune_summary.md").write_text(summary_table(summary) + "\n")
    plot = _plot(rows, list(sizes), out / "tune_scores.png")
    summary["files"] = {"best_config": str(out / "best_config.yaml"), "best_model": str(model_dir),
                        "plot": str(plot) if plot else None,
                        "summary": str(out / "tune_summary.json")}
    log.info("best trial %s: %s", best["trial"], strict_dumps(best["params"]))
    return summary
