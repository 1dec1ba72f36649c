"""Parameter publication: zero-copy views of the object store against a copy, side by side.

    python benchmarks/zero_copy.py --model minilm --steps 10

Two task actors (one CPU each, the same task) get the same published parameters every step: one
makes its parameters views of the object-store buffer (what ``TaskActor.compute`` does), the other
copies the buffer into its own (what it did before
benchmarks/results/throughput.md#optimisations-before-and-after). Reports the medians of each
actor's load and compute time after two warm-up steps, and checks that both return the same
gradient.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from raymeta.cluster import connect  # noqa: E402
from raymeta.core.model import load_encoder, load_tokenizer  # noqa: E402
from raymeta.speed.bench import MODELS, BenchSettings, bench_config  # noqa: E402
from raymeta.train.actor import TaskActor, bind_flat  # noqa: E402


class CopyingActor(TaskActor):
    """The actor as it was: the published parameters are copied into its own buffer."""

    def _load_shared(self, shared: np.ndarray, zero_copy: bool = False) -> None:
        super()._load_shared(shared, zero_copy=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    connect()
    cfg = bench_config(args.model, 1, BenchSettings(), "runs/zero-copy")
    js = cfg.model_dump_json()
    views = ray.remote(TaskActor).options(num_cpus=1).remote(js, "bbc_news_0", 1, "cpu", 0)
    copies = ray.remote(CopyingActor).options(num_cpus=1).remote(js, "bbc_news_0", 1, "cpu", 0)
    ray.get([views.describe.remote(), copies.describe.remote()])
    torch.manual_seed(cfg.seed)
    encoder = load_encoder(cfg.model, len(load_tokenizer(cfg.model)))
    _, flat = bind_flat({f"encoder.{n}": p for n,
                         p in encoder.named_parameters() if p.requires_grad})
    times: dict[str, list[tuple[float, float]]] = {"zero-copy view": [], "copy": []}
    for step in range(args.steps):
        flat.add_(1e-6)  # new parameters every step, as after an outer step
        ref = ray.put(flat.numpy())
        a, b = ray.get([views.compute.remote(ref, step), copies.compute.remote(ref, step)])
        if not np.array_equal(a["grad"], b["grad"]):
            raise SystemExit(f"step {step}: the zero-copy actor's gradient differs")
        if step >= 2:
            times["zero-copy view"].append((a["load_s"], a["compute_s"]))
            times["copy"].append((b["load_s"], b["compute_s"]))
        del ref
    print(f"| {args.model}: parameters | load ms | compute ms |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {1e3 * statistics.median(x[0] for x in t):.1f} | "
              f"{1e3 * statistics.median(x[1] for x in t):.1f} |")
    print(f"(medians of {len(times['copy'])} steps; identical gradients every step)")
    ray.shutdown()


if __name__ == "__main__":
    main()
