"""Step time, start-up time and memory against the number of tasks T, with and without a
meta-batch (``meta.task_batch``), side by side in one run.

    python benchmarks/task_batch.py --tasks 4 8 16 --batch 2 --steps 8 --out task_batch.json

T tasks are copies of the four offline starter tasks under their own names (t00, t01, ...), so
each has its own actor, data and seeded episodes; MiniLM at max_length 64. For each T: a run with
``task_batch: B``, and for the smallest T one without, every task every step. Reported: the median
step time over the steps after the first, the time from launch to the first step's record, and the
peak PSS of the whole process tree (``benchmarks/actor_memory.py``'s sampler). Each actor declares
``resources.memory_per_actor`` GB (``--memory``): idle actors hold their set-up, not a step's
peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from actor_memory import measure  # noqa: E402

STARTER = ["bbc_news", "chatterbot_language", "chatterbot_response", "smlmt_starter"]


def config(n: int, batch: int | None, steps: int, out: Path) -> Path:
    data = {
        "name": f"task-batch-{n}", "seed": 0, "output_dir": str(out),
        "model": {"name_or_path": "offline:all-MiniLM-L6-v2"},
        "tasks": [{"use": STARTER[i % 4], "name": f"t{i:02d}", "max_length": 64}
                  for i in range(n)],
        "meta": {"algorithm": "protonet", "steps": steps, "reduce": "driver",
                 "task_batch": batch,
                 "episode": {"ways": 5, "shots": 4, "queries": 4, "support_size": 6,
                             "query_size": 6}},
        "checkpoint": {"every_steps": 10**6},
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one(n: int, batch: int | None, steps: int, memory: float, root: Path) -> dict[str, object]:
    out = root / f"T{n}-B{batch or n}"
    cfg = config(n, batch, steps, out)
    res = measure(["--config", str(cfg), f"output_dir={out}",
                   f"resources.memory_per_actor={memory}"], None, 1.0)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps_s = [r["step_s"] for r in recs if "step_s" in r][1:]
    first = next(s["t"] for s in res["samples"] if s["step"] >= 1)
    return {"tasks": n, "batch": batch or n, "step_s": statistics.median(steps_s),
            "first_step_at_s": first,
            "tree_pss_peak_gb": max(s["tree_pss"] for s in res["samples"]),
            "drawn": [r.get("tasks") for r in recs if "step_s" in r]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--memory", type=float, default=0.8)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        rows.append(one(min(args.tasks), None, args.steps, args.memory, Path(d)))
        for n in args.tasks:
            rows.append(one(n, args.batch, args.steps, args.memory, Path(d)))
    base = rows[1]["step_s"]
    print("| T | B | step, s (median) | step / step at the smallest T with B | first step at, s "
          "| tree PSS peak, GB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tasks']} | {r['batch']} | {r['step_s']:.2f} | {r['step_s'] / base:.2f} | "
              f"{r['first_step_at_s']:.0f} | {r['tree_pss_peak_gb']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
