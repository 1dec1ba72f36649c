"""Does distributed ProtoNet meta-training help on unseen classes? HuffPost, MiniLM-L6.

    python benchmarks/protonet_huffpost.py [--steps 150] [--episodes 1000]

1. Episodic prototype accuracy of plain MiniLM on the meta-test classes 25-40.
2. `raymeta train --config configs/huffpost_protonet.yaml` (classes 0-19, through Ray).
3. The same evaluation of the meta-trained encoder: same 1000 seeded episodes.
The class split is Bao et al. 2020's, as recalled in ../shared/data/README.md (unchecked).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raymeta.config import load_config  # noqa: E402
from raymeta.eval.episodic import evaluate_init_episodic  # noqa: E402
from raymeta.tasks import task_config  # noqa: E402
from raymeta.train.trainer import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--config", default="configs/huffpost_protonet.yaml")
    args, overrides = ap.parse_known_args()
    cfg = load_config(args.config, [f"meta.steps={args.steps}", *overrides])
    test = task_config("huffpost_meta_test")
    rows = []
    t0 = time.time()
    for label, init in [("MiniLM (plain)", cfg.model.name_or_path), ("MiniLM + raymeta ProtoNet",
                                                                     None)]:
        if init is None:
            t1 = time.time()
            init = str(train(cfg))
            print(f"meta-training: {cfg.meta.steps} steps in {time.time() - t1:.0f}s", flush=True)
        by_k = evaluate_init_episodic(init, test, data_dir=cfg.data_dir, cache_dir=cfg.cache_dir,
                                      episodes=args.episodes,
                                      # every row of classes 25-40, as the reference
                                      splits=("train", "test"))
        res = [by_k[k]["prototype"] for k in sorted(by_k)]
        rows.append((label, res))
        print(label, "|", " | ".join(str(r) for r in res), flush=True)
    print("\n| init | 5-way 1-shot | 5-way 5-shot |\n|---|---|---|")
    for label, res in rows:
        print(f"| {label} | " + " | ".join(f"{100 * r.mean:.1f} ± {100 * r.ci95:.1f}"
                                           for r in res) + " |")
    print(f"\ntotal {time.time() - t0:.0f}s; HuffPost classes 25-40, 15 queries per class, "
          f"{args.episodes} episodes")


if __name__ == "__main__":
    main()
