"""Does ``torch.compile`` of the task model pay on CPU? One task's gradient, eager then compiled.

    python benchmarks/compile_probe.py --model minilm --algorithm multitask --steps 8

In one process with one torch thread (an actor's setting with 2 actors on 2 CPUs): the same
episodes through ``task_gradient``, first eager, then with ``encoder.compile()``. Reports the
compiled run's first step (the compilation), the medians after two steps, and the largest
difference between the two gradients. Second-order MAML is expected to fail (double backward).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from raymeta.core.algorithms import task_gradient  # noqa: E402
from raymeta.core.model import load_tokenizer  # noqa: E402
from raymeta.core.seeds import step_seed  # noqa: E402
from raymeta.speed.bench import MODELS, BenchSettings, bench_config  # noqa: E402
from raymeta.tasks import load_task  # noqa: E402
from raymeta.train.actor import build_task_model  # noqa: E402


def run(cfg, task, tok, steps: int, compiled: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    spec = cfg.tasks[0]
    model = build_task_model(cfg, spec.name, spec.type, task.num_labels, len(tok))
    if compiled:
        model.encoder.compile()
    params = {**model.shared_named_parameters(), **model.head_named_parameters(spec.name)}
    times, first = [], {}
    for step in range(steps):
        episode = task.episode(cfg.meta.episode, cfg.seed, step, stream=spec.name)
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(cfg.seed, spec.name, step))
        r = task_gradient(cfg.meta.algorithm, model, spec.name, spec.type, episode, params,
                          inner_steps=cfg.meta.inner_steps, inner_lr=cfg.meta.inner_lr,
                          distance=cfg.meta.proto.distance, temperature=cfg.meta.proto.temperature)
        times.append(time.perf_counter() - t0)
        first = first or r.grads
    return times, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", choices=list(MODELS))
    ap.add_argument("--algorithm", default="multitask")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = bench_config(args.model, 1, BenchSettings(algorithms=[args.algorithm]),
                       "runs/compile-probe")
    tok = load_tokenizer(cfg.model)
    task = load_task(cfg.tasks[0], tok, cfg.data_dir, cfg.cache_dir)
    eager, g_eager = run(cfg, task, tok, args.steps, compiled=False)
    try:
        comp, g_comp = run(cfg, task, tok, args.steps, compiled=True)
    # e.g. "torch.compile with aot_autograd does not currently support double backward"
    except Exception as e:
        print(f"{args.model} {args.algorithm}: eager {1e3 * statistics.median(eager[2:]):.1f} "
              f"ms/step; compiled: fails ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return
    diff = max(float((g_eager[k] - g_comp[k]).abs().max()) for k in g_eager)
    print(f"{args.model} {args.algorithm}: eager {1e3 * statistics.median(eager[2:]):.1f} ms/step; "
          "compiled "
          f"{1e3 * statistics.median(comp[2:]):.1f} ms/step after a first step of {comp[0]:.1f} s "
          f"(compilation); max |gradient difference| {diff:.1e}")


if __name__ == "__main__":
    main()
