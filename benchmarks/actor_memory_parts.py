"""Where a task actor's memory goes, part by part: its private heap (``Pss_Anon``) as the actor's
set-up adds each part, then after steps, and at the peak inside a step. One process, no Ray: the
parts are the actor's own (``TaskActor``), built in the order it builds them.

    python benchmarks/actor_memory_parts.py --label after --out /tmp/parts_after.json
    python benchmarks/actor_memory_parts.py --label before --pythonpath <old checkout> \\
        --out /tmp/parts_before.json
    python benchmarks/actor_memory_parts.py --plot /tmp/parts_before.json /tmp/parts_after.json \\
        --figure benchmarks/figures/actor_memory_parts.png

The parameters the driver publishes are a copy here (in Ray they sit in the shared object store,
not in the actor's heap), so that part is measured and then left out of the actor's total.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

GB = 2**30


def anon() -> float:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1]) * 1024 / GB
    raise SystemExit("no Pss_Anon in /proc/self/smaps_rollup (Linux 5.x or later)")


def measure(config: str, task: str, steps: int) -> dict[str, object]:
    parts: list[tuple[str, float]] = []
    last = [0.0]

    def mark(name: str) -> None:
        now = anon()
        parts.append((name, now - last[0]))
        last[0] = now

    mark("python")
    import ray  # noqa: F401
    import torch
    import transformers  # noqa: F401

    mark("torch, transformers, ray imported")
    from raymeta.config import load_config
    from raymeta.core.model import load_tokenizer
    from raymeta.eval.scoring import ValidationScorer
    from raymeta.storage import local_model_path
    from raymeta.tasks import load_task
    from raymeta.train.actor import TaskActor, bind_flat, build_task_model

    mark("raymeta and transformers' model code")
    cfg = load_config(config)
    torch.set_num_threads(2)
    spec = cfg.task(task)
    tok = load_tokenizer(cfg.model, fetch=local_model_path)
    mark("tokenizer")
    data = load_task(spec, tok, cfg.data_dir, cfg.cache_dir)
    ValidationScorer(cfg, tok)
    mark("task data, tokenised")
    model = build_task_model(cfg, spec.name, spec.type, data.num_labels, len(tok))
    mark("model (weights memory-mapped)")
    bind_flat(model.shared_named_parameters())
    mark("trainable parameters in one buffer")
    del model, data, tok
    actor = TaskActor(cfg.model_dump_json(), task, num_threads=2)  # the real one, as Ray runs it
    actor.check_ready()
    import gc

    gc.collect()
    set_up = anon()
    shared = actor.flat.detach().clone().numpy()
    published = anon() - set_up
    peak = [0.0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], anon())
            time.sleep(0.01)

    after = {}
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for s in range(steps):
        actor.compute(shared, s)
        if s + 1 in (1, 10, steps):
            after[s + 1] = anon() - published
    stop.set()
    watcher.join()
    return {"config": config, "task": task, "parts": parts, "set_up": set_up,
            "published": published, "after_steps": after, "peak_in_step": peak[0] - published}


def plot(paths: list[str], figure: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in paths]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = plt.cm.tab20.colors
    for x, r in enumerate(runs):
        bottom = r["parts"][0][1]
        for i, (name, v) in enumerate(r["parts"][1:]):
            ax.bar(x, v, bottom=bottom, color=colors[i], label=name if x == 0 else None)
            bottom += v
        last = max(r["after_steps"], key=int)
        held = r["after_steps"][last] - bottom
        ax.bar(x, held, bottom=bottom, color="lightgrey", hatch="//",
               label="gradient buffer and the heap kept after the steps" if x == 0 else None)
        ax.plot([x - 0.4, x + 0.4], [r["peak_in_step"]] * 2, color="black", lw=2,
                label="peak inside a step" if x == 0 else None)
    ax.axhline(0.6, color="grey", ls=":", lw=1)
    ax.set_xticks(range(len(runs)), [f"{r['label']}\nafter {max(r['after_steps'], key=int)} "
                                     "steps" for r in runs])
    ax.set_ylabel("private heap (Pss_Anon), GB")
    ax.set_title(f"a MiniLM task actor ({runs[0]['task']}, {runs[0]['config']}): its parts")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(figure, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="starter")
    ap.add_argument("--task", default="bbc_news")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--label", default="run")
    ap.add_argument("--out")
    ap.add_argument("--pythonpath", help="a checkout of raymeta to measure instead of this one")
    ap.add_argument("--plot", nargs="+")
    ap.add_argument("--figure", default="actor_memory_parts.png")
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.figure)
        return
    if args.pythonpath and os.environ.get("_PARTS_CHILD") != "1":
        env = {**os.environ, "PYTHONPATH": args.pythonpath, "_PARTS_CHILD": "1"}
        sys.exit(subprocess.call([sys.executable, os.path.abspath(__file__), *sys.argv[1:]],
                                 env=env))
    res = measure(args.config, args.task, args.steps)
    res["label"] = args.label
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
