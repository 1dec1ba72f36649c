"""Markdown tables and PNG plots of evaluation results and meta-training curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["kshot_label", "kshot_results", "percent_cell", "results_table", "plot_scores",
           "plot_curves"]


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


def _columns(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Column name -> result, for one task entry: K-shot results (every method), then episodic
    ones."""
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
            cols += [c for c in _columns(entry) if c not in cols]
    out = []
    for name, cols in tasks.items():
        metric = next(r["tasks"][name]["metric"] for r in by_init.values() if name in r["tasks"])
        out.append(f"**{name}** ({metric}, %, mean ± 95% CI)\n")
        out.append("| init | " + " | ".join(cols) + " |")
        out.append("|---|" + "---|" * len(cols))
        for init, res in by_init.items():
            have = _columns(res["tasks"].get(name) or {})
            cells = [percent_cell(have[c]["mean"],
                                  have[c].get("ci95")) if c in have else "—" for c in cols]
            out.append(f"| {init} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot_scores(by_init: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Score against K for each init and method (one line each), one PNG per K-shot task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = sorted({n for r in by_init.values() for n, e in r["tasks"].items() if kshot_results(e)})
    styles = {"finetune": "-", "setfit": "--", "prototype": ":"}
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        for init, res in by_init.items():
            lines: dict[str, dict[int, dict[str, Any]]] = {}
            for m, k, r in kshot_results(res["tasks"].get(name) or {}):
                lines.setdefault(m, {})[int(k)] = r
            for m, by_k in lines.items():
                ks = sorted(by_k)
                ax.errorbar(ks, [100 * by_k[k]["mean"] for k in ks],
                            yerr=[100 * (by_k[k]["ci95"] or 0) for k in ks],
                            marker="o", capsize=3, linestyle=styles.get(m, "-"),
                            label=init if m == "finetune" else f"{init} ({m})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K (examples per class)")
        metric = next(r["tasks"][name]["metric"] for r in by_init.values() if name in r["tasks"])
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(name)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"scores_{name}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


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
