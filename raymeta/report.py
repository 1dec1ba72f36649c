"""Markdown tables and PNG plots of evaluation results and meta-training curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["results_table", "plot_scores", "plot_curves"]


def _cell(r: dict[str, Any]) -> str:
    ci = r.get("ci95")
    return f"{100 * r['mean']:.1f} ± {100 * ci:.1f}" if ci == ci and ci is not None else f"{100 * r['mean']:.1f}"


def results_table(by_init: dict[str, dict[str, Any]]) -> str:
    """One Markdown table per task: rows are inits, columns K (or episodic settings); mean ± 95% CI, in %."""
    tasks: dict[str, list[str]] = {}
    for res in by_init.values():
        for name, entry in res["tasks"].items():
            cols = tasks.setdefault(name, [])
            if "shots" in entry:
                keys = [f"K={k}" for k in entry["shots"]]
            else:
                keys = [f"{s} {kind}" for s, kinds in entry["episodic"].items() for kind in kinds]
            cols += [k for k in keys if k not in cols]
    out = []
    for name, cols in tasks.items():
        metric = next(r["tasks"][name]["metric"] for r in by_init.values() if name in r["tasks"])
        out.append(f"**{name}** ({metric}, %, mean ± 95% CI)\n")
        out.append("| init | " + " | ".join(cols) + " |")
        out.append("|---|" + "---|" * len(cols))
        for init, res in by_init.items():
            entry = res["tasks"].get(name)
            cells = []
            for c in cols:
                r = None
                if entry and c.startswith("K="):
                    r = entry.get("shots", {}).get(c[2:])
                elif entry:
                    setting, _, kind = c.rpartition(" ")
                    r = entry.get("episodic", {}).get(setting, {}).get(kind)
                cells.append(_cell(r) if r else "—")
            out.append(f"| {init} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot_scores(by_init: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Score against K for each init, one PNG per K-shot task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = sorted({n for r in by_init.values() for n, e in r["tasks"].items() if "shots" in e})
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        for init, res in by_init.items():
            entry = res["tasks"].get(name)
            if not entry or "shots" not in entry:
                continue
            ks = sorted(entry["shots"], key=int)
            ax.errorbar([int(k) for k in ks], [100 * entry["shots"][k]["mean"] for k in ks],
                        yerr=[100 * (entry["shots"][k]["ci95"] or 0) for k in ks], marker="o", capsize=3, label=init)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K (examples per class)")
        ax.set_ylabel(f"{next(iter(by_init.values()))['tasks'][name]['metric']} (%)")
        ax.set_title(name)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"scores_{name}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_curves(runs: dict[str, Path], out: Path) -> Path:
    """Meta-training curves: mean task loss per step, one line per algorithm (from metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, path in runs.items():
        recs = [r for r in map(json.loads, Path(path).read_text().splitlines()) if r.get("kind") != "validation"]
        loss = [[float("nan") if v is None else v for v in r["loss"].values()] for r in recs]  # null: non-finite
        ax.plot([r["step"] + 1 for r in recs], [sum(x) / len(x) for x in loss], label=name)
    ax.set_xlabel("meta-step")
    ax.set_ylabel("mean task loss (each algorithm's own outer loss)")
    ax.set_title("meta-training curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
