"""Paired gains between any two result columns, split by split or episode by episode
(benchmarks/results/metaoptnet.md).

``raymeta benchmark`` pairs each init with a baseline under the same classifier. This pairs any two
columns that were scored on the same seeded splits (K-shot) or episodes: two classifiers
(MetaOptNet's ridge head on its own init against ProtoNet's prototype on its own), or a result from
another file on the same splits and test rows (SetFit on the plain model, run by ``raymeta
evaluate``). A side is FILE:INIT:COLUMN, where INIT names a run in a benchmark's results.json (empty
for a ``raymeta evaluate`` file) and COLUMN is a results-table column (``K=8 ridge``, ``5-way 5-shot
prototype``; ``K=8`` is fine-tuning). Splits that are not the same rows are refused.

    python benchmarks/paired.py --task huffpost_meta_test \\
        "runs/recipes/huffpost_metaopt/benchmark/results.json:ridge:K=8 ridge" \\
        "runs/recipes/huffpost_metaopt/benchmark/results.json:base/protonet:K=8 prototype"
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from raymeta.eval.metrics import paired_ci95
from raymeta.eval.report import kshot_label, kshot_results, percent_cell


def column(spec: str, task: str) -> tuple[str, dict[str, Any], Any]:
    """FILE:INIT:COLUMN -> (label, result, the K-shot split rows or None). INIT may hold colons
    (``offline:all-MiniLM-L6-v2``): the file is what comes before the first colon, the column what
    comes after the last."""
    path, rest = spec.split(":", 1)
    init, col = rest.rsplit(":", 1)
    with open(path) as f:
        data = json.load(f)
    res = data["results"][init] if init else data
    entry = res["tasks"][task]
    cols = {kshot_label(m, k): (r, (res.get("splits") or {}).get(task, {}).get(str(k))) for m, k,
            r in kshot_results(entry)}
    cols.update({f"{s} {kind}": (r, None) for s, kinds in entry.get("episodic",
                                                                    {}).items() for kind,
                 r in kinds.items()})
    if col not in cols:
        raise SystemExit(f"{spec}: no column '{col}' (known: {', '.join(cols)})")
    return f"{init or data.get('init')}: {col}", *cols[col]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("sides", nargs="+",
                    help="FILE:INIT:COLUMN ...; each is paired with the last (the baseline)")
    args = ap.parse_args()
    *others, base = [column(s, args.task) for s in args.sides]
    lb, rb, sb = base
    print(f"| {args.task} | score | paired gain over {lb} |\n|---|---|---|")
    print(f"| {lb} | {percent_cell(rb['mean'], rb['ci95'])} | — |")
    for la, ra, sa in others:
        if sa is not None and sb is not None and sa != sb:
            raise SystemExit(f"{la}: its splits are not {lb}'s rows")
        g = paired_ci95(ra["values"], rb["values"])
        print(f"| {la} | {percent_cell(ra['mean'], ra['ci95'])} | "
              f"{percent_cell(g['mean'], g['ci95'], signed=True)} |")


if __name__ == "__main__":
    main()
