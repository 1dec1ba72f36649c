"""The driver's per-step tensor work in isolation: reduction, clipping and the outer AdamW step.

    python benchmarks/driver_ops.py --model minilm --tasks 2 16 --threads 1 2

For MiniLM-L6's (or the tiny BERT's) shared parameters and N random task gradients it times,
side by side in one process, medians over --repeat runs: ``reduce_gradients`` (one chunked pass:
sums, Gram matrix, weighted sum), and AdamW as ``optim.outer_optimizer`` builds it (fused) and as
before the optimisations of benchmarks/results/throughput.md#optimisations-before-and-after (the
for-loop implementation), at each torch thread count. It is what `raymeta speed` reports as ``reduce
ms`` and ``outer ms``, without actors, Ray or the network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raymeta.config import ModelConfig  # noqa: E402
from raymeta.core.combine import TaskGrad, reduce_gradients  # noqa: E402
from raymeta.core.model import load_encoder  # noqa: E402
from raymeta.speed.bench import MODELS  # noqa: E402
from raymeta.train.actor import bind_flat  # noqa: E402


def timed(fn, repeat: int) -> float:
    fn()  # warm-up: first-touch page faults, thread pool start
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", choices=list(MODELS))
    ap.add_argument("--tasks", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    encoder = load_encoder(ModelConfig(**MODELS[args.model]))
    named = {f"encoder.{n}": p for n, p in encoder.named_parameters() if p.requires_grad}
    layout, flat = bind_flat(named)
    rng = np.random.default_rng(0)
    print(f"{args.model}: {layout.numel} shared parameters\n")
    print("| threads | N | reduce ms | AdamW fused ms | AdamW for-loop ms | clip ms |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n in args.tasks:
            grads = [TaskGrad(f"t{i}", rng.standard_normal(layout.numel, dtype=np.float32) * 1e-3,
                              1.0, 1.0) for i in range(n)]
            out = torch.empty(layout.numel)
            reduce_ms = timed(lambda g=grads, o=out: reduce_gradients(g, layout.numel, step=0,
                                                                      out=o), args.repeat)
            for p, g in zip(named.values(), layout.unflatten(out).values()):
                p.grad = g
            clip_ms = timed(lambda: torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0),
                            args.repeat)
            adam = {}
            for kind, kw in (("fused", {"fused": True}), ("for-loop", {"foreach": False})):
                opt = torch.optim.AdamW(list(named.values()), lr=1e-5, **kw)
                adam[kind] = timed(opt.step, args.repeat)
            print(f"| {threads} | {n} | {reduce_ms:.1f} | {adam['fused']:.1f} | "
                  f"{adam['for-loop']:.1f} | {clip_ms:.1f} |")


if __name__ == "__main__":
    main()
