"""The held-out families table of benchmarks/results/adapt.md and RESULTS.md: per family and K,
each init's accuracy with each head, and the paired gains of adapt over plain and over TSDAE, from
the ``raymeta evaluate`` result files of the commands in adapt.md (every init of a family on the
same seeded splits; rows from different files are paired only where their splits are the same).

    python benchmarks/adapt_families_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

from raymeta.eval.metrics import mean_ci95, paired_ci95

HERE = Path(__file__).resolve().parent
# family -> the result files holding its inits (``raymeta evaluate --output``)
FILES = {
    "AG News (4 topics)": ["adapt_ag_news_k8.json", "adapt_ag_news_tsdae_k8.json"],
    "Banking77 (77 intents)": ["adapt_banking77_k5.json", "adapt_banking77_k10.json"],
    "HuffPost (16 test categories)": ["adapt_huffpost16.json"],
}


def role(init: str) -> str:
    """An init's part in the benchmark, from its path (adapt.md's commands)."""
    if init.startswith("offline:"):
        return "plain"
    if "run_general" in init:
        return "general"
    return "tsdae" if "tsdae" in init else "adapt"


def columns(files: list[str]) -> dict[tuple[str, str, str], tuple[list[float], list]]:
    """(role, head, K) -> (per-split accuracies, the splits' rows)."""
    out: dict[tuple[str, str, str], tuple[list[float], list]] = {}
    for name in files:
        path = HERE / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        # several inits: {"results": {init: result}}; one: the result itself
        for init, res in (data["results"] if "results" in data else {data["init"]: data}).items():
            task = res["tasks"]["task"]
            for head, by_k in task.get("methods", {}).items():
                for k, r in by_k.items():
                    out[role(init), head, k] = (r["values"], res["splits"]["task"][k])
    return out


def cell(values: list[float]) -> str:
    s = mean_ci95(values)
    return f"{100 * s['mean']:.1f} ± {100 * s['ci95']:.1f}"


def mean_cell(cols: dict, key: tuple[str, str, str]) -> str:
    return cell(cols[key][0]) if key in cols else "—"


def gain(cols: dict, a: tuple[str, str, str], b: tuple[str, str, str]) -> str:
    if a not in cols or b not in cols:
        return "—"
    (va, ra), (vb, rb) = cols[a], cols[b]
    assert ra == rb, f"{a} and {b}: not the same splits"
    d = paired_ci95(va, vb)
    lo = 100 * (d["mean"] - d["ci95"])
    text = f"{100 * d['mean']:+.1f} ± {100 * d['ci95']:.1f}".replace("-", "−")
    return f"**{text}**" if lo > 0 or 100 * (d["mean"] + d["ci95"]) < 0 else text


def main() -> None:
    print("| family | K | plain + SetFit | TSDAE + SetFit | general + SetFit | adapt + SetFit "
          "| adapt + prototype | adapt + ridge | adapt − plain (SetFit) | adapt − TSDAE (SetFit) "
          "| adapt − plain (prototype) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for family, files in FILES.items():
        cols = columns(files)
        for k in sorted({k for (_, _, k) in cols}, key=int):
            cells = [mean_cell(cols, (r, "setfit", k))
                     for r in ("plain", "tsdae", "general", "adapt")]
            cells += [mean_cell(cols, ("adapt", h, k)) for h in ("prototype", "ridge")]
            print(f"| {family} | {k} | {' | '.join(cells)} "
                  f"| {gain(cols, ('adapt', 'setfit', k), ('plain', 'setfit', k))} "
                  f"| {gain(cols, ('adapt', 'setfit', k), ('tsdae', 'setfit', k))} "
                  f"| {gain(cols, ('adapt', 'prototype', k), ('plain', 'prototype', k))} |")


if __name__ == "__main__":
    main()
