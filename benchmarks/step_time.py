"""Meta-step time of the distributed trainer, split into actor compute and everything else.

    python benchmarks/step_time.py --tasks 2 4 --steps 8 --reduce driver collective

For each N it meta-trains MiniLM on N offline starter tasks (local Ray instance, 2 CPUs
here) and reports medians over the steps after the first (warm-up): the step time, the
slowest actor's compute, and the driver-side parts (publish, wait beyond compute,
reduce, outer step). Ratios, not absolute seconds, are what transfer between machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raymeta.config import load_config  # noqa: E402
from raymeta.train.trainer import train  # noqa: E402

TASKS = ["bbc_news", "chatterbot_language", "chatterbot_response", "chatterbot_topics"]


def run(n: int, steps: int, model: str, algorithm: str, reduce: str, out: Path) -> dict[str, float]:
    run_dir = out / f"{reduce}-n{n}"
    cfg = load_config(data={
        "name": f"bench-{n}", "output_dir": str(run_dir), "model": {"name_or_path": model},
        "tasks": [{"use": t, "max_length": 64} for t in TASKS[:n]],
        "meta": {"algorithm": algorithm, "steps": steps, "reduce": reduce,
                 "episode": {"ways": 5, "shots": 4, "queries": 4, "support_size": 8,
                             "query_size": 8}},
        "checkpoint": {"every_steps": 10**6},
    })
    train(cfg)
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]

    def med(key):
        return statistics.median(r.get(key, float("nan")) for r in recs)

    step, compute = med("step_s"), med("compute_max_s")
    # driver: publish + wait(compute) + reduce + outer on the driver; collective: all-reduce + outer
    # on the actors
    comm = med("reduce_s") + med("publish_s") if reduce == "driver" else med("allreduce_s")
    return {"reduce": reduce, "tasks": n, "step_s": step, "compute_max_s": compute,
            "overhead_s": step - compute,
            "ratio": step / compute, "reduce_or_allreduce_s": comm, "outer_s": med("outer_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--model", default="offline:all-MiniLM-L6-v2")
    ap.add_argument("--algorithm", default="protonet")
    ap.add_argument("--reduce", nargs="+", default=["driver"], choices=["driver", "collective"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rows = [run(n, args.steps, args.model, args.algorithm, mode,
                    Path(d)) for n in args.tasks for mode in args.reduce]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])
                                for c in cols) + " |")


if __name__ == "__main__":
    main()
