"""Episode assembly per step: one columnar read against ``select(rows).to_list()``, side by side.

    python benchmarks/episode_time.py --task bbc_news --repeat 200

``Task.batch`` turns episode rows into a padded batch twice per step on every actor. Before
benchmarks/results/throughput.md#optimisations-before-and-after it read the rows with
``Dataset.select(rows).to_list()`` (an indices mapping per call); now with one
``Dataset.__getitem__(rows)``. Both paths are timed here on `raymeta speed`'s episode (2-way, 2+2
shots, 64 tokens) and must give identical batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from raymeta.core.model import load_tokenizer  # noqa: E402
from raymeta.speed.bench import BenchSettings, bench_config  # noqa: E402
from raymeta.tasks import load_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="bbc_news")
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = bench_config("tiny", 1, BenchSettings(extra=[f"tasks.0.use={args.task}"]),
                       "runs/episode-time")
    tok = load_tokenizer(cfg.model)
    task = load_task(cfg.tasks[0], tok, cfg.data_dir, cfg.cache_dir)
    ds = task.features["train"]
    ep = task.episode(cfg.meta.episode, cfg.seed, 0)
    rows = ep.support_rows

    def old() -> dict:
        return task.processor.collate(ds.select(rows).to_list(), tok)

    a, b = old(), task.batch(rows)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the two paths differ"
    for name, fn in (("select(rows).to_list() + collate", old), ("ds[rows] + collate (Task.batch)",
                                                                 lambda: task.batch(rows)),
                     ("whole episode (Task.episode)", lambda: task.episode(cfg.meta.episode,
                                                                           cfg.seed, 1))):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(f"{name}: {1e3 * statistics.median(times):.3f} ms (median of {args.repeat}, "
              f"{len(rows)} rows)")


if __name__ == "__main__":
    main()
