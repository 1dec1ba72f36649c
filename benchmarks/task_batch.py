"""Step time, start-up time and memory against the number of tasks T, with and without a
meta-batch (``meta.task_batch``), side by side in one run.

    python benchmarks/task_batch.py --tasks 4 8 16 --batch 2 --steps 8 --out task_batch.json
    python benchmarks/task_batch.py --tasks 8 32 128 --batch 4 --workers 2 --memory 0 \
        --out task_batch_workers.json

T tasks are copies of the four offline starter tasks under their own names (t00, t01, ...), so
each has its own actor, data and seeded episodes; MiniLM at max_length 64. For each T: a run with
``task_batch: B``, and for the smallest T one without, every task every step. Reported: the median
step time over the steps after the first, the time from launch to the first step's record, and the
peak PSS of the whole process tree (``benchmarks/actor_memory.py``'s sampler). Each actor declares
``resources.memory_per_actor`` GB (``--memory``; 0: none): idle actors hold their set-up, not a
step's peak. ``--workers W``: every run on W workers (``resources.workers``), each owning T / W
tasks, and no run without the meta-batch: the baseline is the smallest T.
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


def config(n: int, batch: int | None, steps: int, out: Path, workers: int | None = None) -> Path:
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
        "resources": {"workers": workers},
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one(n: int, batch: int | None, steps: int, memory: float, root: Path,
        workers: int | None = None) -> dict[str, object]:
    out = root / f"T{n}-B{batch or n}"
    cfg = config(n, batch, steps, out, workers)
    res = measure(["--config", str(cfg), f"output_dir={out}",
                   f"resources.memory_per_actor={memory or 'null'}"], None, 1.0)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps_s = [r["step_s"] for r in recs if "step_s" in r][1:]
    first = next(s["t"] for s in res["samples"] if s["step"] >= 1)
    # with workers: each step's busiest worker, the sum of its drawn tasks' compute (a worker
    # computes its tasks one after the other), which the draw decides and T does not
    busiest = []
    if (out / "workers.json").is_file():
        shares = [w["tasks"] for w in json.loads((out / "workers.json").read_text())["workers"]]
        for r in [r for r in recs if "step_s" in r][1:]:
            busiest.append(max(sum(r["compute_s"].get(k, 0.0) for k in share)
                               for share in shares))
    return {"tasks": n, "batch": batch or n, "workers": workers or n,
            "busiest_worker_s": statistics.median(busiest) if busiest else None,
            "step_s": statistics.median(steps_s),
            "first_step_at_s": first,
            "tree_pss_peak_gb": max(s["tree_pss"] for s in res["samples"]),
            "drawn": [r.get("tasks") for r in recs if "step_s" in r]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--memory", type=float, default=0.8)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        if args.workers is None:
            rows.append(one(min(args.tasks), None, args.steps, args.memory, Path(d)))
        for n in args.tasks:
            rows.append(one(n, args.batch, args.steps, args.memory, Path(d), args.workers))
    base = rows[0 if args.workers else 1]["step_s"]
    print("| T | W | B | step, s (median) | step / step at the smallest T with B "
          "| busiest worker's compute, s (median) | first step at, s | tree PSS peak, GB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        busy = f"{r['busiest_worker_s']:.2f}" if r.get("busiest_worker_s") else "—"
        print(f"| {r['tasks']} | {r['workers']} | {r['batch']} | {r['step_s']:.2f} | "
              f"{r['step_s'] / base:.2f} | {busy} | "
              f"{r['first_step_at_s']:.0f} | {r['tree_pss_peak_gb']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
