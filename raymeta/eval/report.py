"""Markdown tables and PNG plots of evaluation results and meta-training curves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["kshot_label", "kshot_results", "percent_cell", "result_columns", "results_table",
           "plot_scores", "plot_against_k", "plot_curves"]


def kshot_results(entry: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(method, K, result)`` for every K-shot result of one task entry of ``raymeta evaluate``'s
    results: ``finetune``'s under ``shots`` (where they have always been), every other method's
    under ``methods``."""
    out = [("finetune", k, r) for k, r in entry.get("shots", {}).items()]
    return out + [(m, k, r) for m, by_k in entry.get("methods", {}).items() for k,
                  r in by_k.items()]


def kshot_label(method: str, k: str | int) -> str:
    """A K-shot result's column (and gain) name: ``K=8`` for ``finetune``, ``K=8 setfit`` for
    another method."""
    return f"K={k}" if method == "finetune" else f"K={k} {method}"


def percent_cell(mean: float, ci95: float | None, *, signed: bool = False) -> str:
    """A fraction as a table cell in %, with ± its 95% CI where one is defined (``null`` in the
    strict JSON, or NaN: one split or one episode has no interval)."""
    m = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return m if ci95 is None or ci95 != ci95 else f"{m} ± {100 * ci95:.1f}"


def result_columns(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Column (setting) name -> result, for one task entry: K-shot results (every method: ``K=8``,
    ``K=8 setfit``), then episodic ones (``5-way 1-shot prototype``)."""
    cols = {kshot_label(m, k): r for m, k, r in kshot_results(entry)}
    cols.update({f"{s} {kind}": r for s, kinds in entry.get("episodic", {}).items() for kind,
                 r in kinds.items()})
    return cols


def results_table(by_init: dict[str, dict[str, Any]]) -> str:
    """One Markdown table per task: rows are inits, columns K (``K=8``: fine-tuning; ``K=8 setfit``:
    another method) or episodic settings; mean ± 95% CI, in %."""
    tasks: dict[str, list[str]] = {}
    for res in by_init.values():
        for name, entry in res["tasks"].items():
            cols = tasks.setdefault(name, [])
            cols += [c for c in result_columns(entry) if c not in cols]
    out = []
    for name, cols in tasks.items():
        metric = next(r["tasks"][name]["metric"] for r in by_init.values() if name in r["tasks"])
        out.append(f"**{name}** ({metric}, %, mean ± 95% CI)\n")
        out.append("| init | " + " | ".join(cols) + " |")
        out.append("|---|" + "---|" * len(cols))
        for init, res in by_init.items():
            have = result_columns(res["tasks"].get(name) or {})
            cells = [percent_cell(have[c]["mean"],
                                  have[c].get("ci95")) if c in have else "—" for c in cols]
            out.append(f"| {init} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


_STYLES = {"finetune": "-", "setfit": "--", "prototype": ":"}


def _series(entry: dict[str, Any], episodic: bool) -> dict[str, dict[int, dict[str, Any]]]:
    """One task entry's results as lines against K: method -> {K: result} for the K-shot ones and,
    with ``episodic``, ``N-way classifier`` -> {K: result} for the episodic ones."""
    lines: dict[str, dict[int, dict[str, Any]]] = {}
    for m, k, r in kshot_results(entry):
        lines.setdefault(m, {})[int(k)] = r
    for setting, kinds in entry.get("episodic", {}).items() if episodic else ():
        found = re.fullmatch(r"(\d+)-way (\d+)-shot", setting)
        if found is None:
            continue
        for kind, r in kinds.items():
            lines.setdefault(f"{found[1]}-way {kind}", {})[int(found[2])] = r
    return lines


def _bar(ci95: float | None) -> float:
    """An error bar in %: none where the CI is undefined (null in the strict JSON, or NaN: one
    split)."""
    return 0.0 if ci95 is None or ci95 != ci95 else 100 * ci95


def _draw_task(ax: Any, by_init: dict[str, dict[str, Any]], name: str, episodic: bool) -> None:
    """One task's score against K on ``ax``: a line per init and method, with 95% CI error bars."""
    ks: set[int] = set()
    lines = [(init, m, by_k) for init, res in by_init.items()
             for m, by_k in _series(res["tasks"].get(name) or {}, episodic).items()]
    for j, (init, m, by_k) in enumerate(lines):
        x = sorted(by_k)
        ks.update(x)
        # each line a little to the side, so that error bars at the same K stay apart
        side = 0.06 * (j - (len(lines) - 1) / 2)
        ax.errorbar([k * 2 ** side if k > 0 else side for k in x],
                    [100 * by_k[k]["mean"] for k in x],
                    yerr=[_bar(by_k[k].get("ci95")) for k in x],
                    marker="o", capsize=3, linestyle=_STYLES.get(m, "-"),
                    label=init if m == "finetune" else f"{init} ({m})")
    if ks and min(ks) > 0:
        ax.set_xscale("log", base=2)
    else:  # K = 0 (label names alone) has no logarithm
        ax.set_xscale("symlog", base=2, linthresh=1)
    if len(ks) == 1:  # one K: the lines' points near the middle, not at the edges
        k = next(iter(ks))
        ax.set_xlim(*((k / 1.5, k * 1.5) if k > 0 else (-1, 1)))
    ax.minorticks_off()
    ax.set_xticks(sorted(ks), [str(k) for k in sorted(ks)])
    ax.set_xlabel("K (examples per class)")
    metric = next(r["tasks"][name]["metric"] for r in by_init.values() if name in r["tasks"])
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(name)
    ax.legend(fontsize=7)


def plot_scores(by_init: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Score against K for each init and method (one line each), one PNG per K-shot task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = sorted({n for r in by_init.values() for n, e in r["tasks"].items() if kshot_results(e)})
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw_task(ax, by_init, name, episodic=False)
        fig.tight_layout()
        p = out_dir / f"scores_{name}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_against_k(by_init: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """``raymeta evaluate``'s plot: the score against K of every init (and method), K-shot and
    episodic, with 95% CI error bars; one panel per task, in one PNG at ``path``. None (and no file)
    where there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(n for r in by_init.values() for n, e in r["tasks"].items()
                               if _series(e, episodic=True)))
    if not names:
        return None
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        _draw_task(ax, by_init, name, episodic=True)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(runs: dict[str, Path], out: Path) -> Path:
    """Meta-training curves: mean task loss per step, one line per algorithm (from
    metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, path in runs.items():
        recs = [r for r in map(json.loads,
                               Path(path).read_text().splitlines())
                if r.get("kind") != "validation"]
        # null: non-finite
        loss = [[float("nan") if v is None else v for v in r["loss"].values()] for r in recs]
        ax.plot([r["step"] + 1 for r in recs], [sum(x) / len(x) for x in loss], label=name)
    ax.set_xlabel("meta-step")
    ax.set_ylabel("mean task loss (each algorithm's own outer loss)")
    ax.set_title("meta-training curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
