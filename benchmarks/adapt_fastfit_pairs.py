"""Paired gains on the adapt benchmark's AG News task between columns of different result files
scored on the same seeded K-shot splits (benchmarks/results/adapt.md, "FastFit on the same
splits"): raymeta's adapted init with its heads against FastFit and SetFit on the plain encoder.

    python benchmarks/adapt_fastfit_pairs.py

``benchmarks/paired.py`` does this for one pair at a time (FILE:INIT:COLUMN); this runs every pair
of the table. Splits that are not the same rows are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from raymeta.eval.metrics import mean_ci95, paired_ci95

HERE = Path(__file__).resolve().parent
PLAIN, ADAPT = "offline:all-MiniLM-L6-v2", "/tmp/adapt_bench/run_nolabel/best"
K1 = HERE / "adapt_ag_news_fastfit_k1.json"
K1_NO_NAMES = HERE / "adapt_ag_news_fastfit_k1_nonames.json"
K8, K8_SETFIT = HERE / "adapt_ag_news_fastfit_k8.json", HERE / "adapt_ag_news_k8.json"


def values(path: Path, init: str, method: str, k: str) -> tuple[list[float], list[list[int]]]:
    """A method's per-split accuracies for ``init`` at K = ``k``, and the splits' rows."""
    data = json.loads(path.read_text())["results"][init]
    return data["tasks"]["task"]["methods"][method][k]["values"], data["splits"]["task"][k]


# (name, the side gaining, the side it is paired against); a side: (file, init, method, K)
PAIRS = [
    ("K=1 adapt prototype - plain FastFit", (K1, ADAPT, "prototype", "1"),
     (K1, PLAIN, "fastfit", "1")),
    ("K=1 adapt FastFit - plain FastFit", (K1, ADAPT, "fastfit", "1"), (K1, PLAIN, "fastfit", "1")),
    ("K=1 plain FastFit, names - without", (K1, PLAIN, "fastfit", "1"),
     (K1_NO_NAMES, PLAIN, "fastfit", "1")),
    ("K=8 adapt prototype - plain FastFit", (K8_SETFIT, ADAPT, "prototype", "8"),
     (K8, PLAIN, "fastfit", "8")),
    ("K=8 adapt SetFit - plain FastFit", (K8_SETFIT, ADAPT, "setfit", "8"),
     (K8, PLAIN, "fastfit", "8")),
    ("K=8 plain SetFit - plain FastFit", (K8_SETFIT, PLAIN, "setfit", "8"),
     (K8, PLAIN, "fastfit", "8")),
    ("K=8 adapt FastFit - plain FastFit", (K8, ADAPT, "fastfit", "8"), (K8, PLAIN, "fastfit", "8")),
]


def main() -> None:
    for init in (PLAIN, ADAPT):
        for path, method, k in ((K1, "fastfit", "1"), (K1, "prototype", "1"),
                                (K8, "fastfit", "8")):
            s = mean_ci95(values(path, init, method, k)[0])
            print(f"{init} K={k} {method}: {100 * s['mean']:.1f} ± {100 * s['ci95']:.1f}")
    for name, gaining, against in PAIRS:
        (a, rows_a), (b, rows_b) = values(*gaining), values(*against)
        assert rows_a == rows_b, f"{name}: not the same splits"
        d = paired_ci95(a, b)
        print(f"{name}: {100 * d['mean']:+.1f} ± {100 * d['ci95']:.1f} (n = {len(a)})")


if __name__ == "__main__":
    main()
